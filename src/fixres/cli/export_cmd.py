"""``fixres export``: a folder timm loads as it is (config.json + model.safetensors), optionally ONNX."""
from __future__ import annotations

import json

from ..deploy.export import export_checkpoint, export_text, read_export
from ..models.onnx import ONNX_TOLERANCE
from ..models.ladder import LADDER_FILE
from .common import add_model_source, add_output_flags, command, finish, model_source


def register(sub) -> None:
    p = command(sub, "export", "write a timm-loadable folder (and optionally ONNX) for a checkpoint", """
        Write OUT/config.json + OUT/model.safetensors so that timm.create_model('local-dir:OUT',
        pretrained=True) builds the model and timm's data config of that model gives the test
        preprocessing (resize floor(test_res / crop_pct), centre crop test_res). Both input_size and
        test_input_size are the test resolution; the training resolution is recorded under config.json's
        'fixres' key. OUT must not exist or be empty.
    """)
    add_model_source(p, exclude=("restrict_labels",))
    add_output_flags(p, out="folder to create (refused if it exists and is not empty)", out_required=True, quiet=None,
                     json="print the export record (config.json's 'fixres' part) as JSON")
    p.add_argument("--onnx", action="store_true",
                   help="also write model.onnx at the test resolution (dynamic batch axis) and check it against "
                        f"PyTorch with ONNX Runtime (max abs diff <= {ONNX_TOLERANCE:g} x max(1, |logit|)); "
                        "needs pip install 'fixres[onnx]'")
    p.add_argument("--test-res", type=int, default=None, help="test resolution to record (default: the checkpoint's)")
    p.add_argument("--crop-pct", type=float, default=None, help="centre-crop fraction to record (default: the "
                                                                "checkpoint's)")
    p.set_defaults(handler=run)


def run(args) -> int:
    out = export_checkpoint(model_source(args), args.out, onnx=args.onnx, test_res=args.test_res,
                            crop_pct=args.crop_pct)
    if (out / LADDER_FILE).is_file():      # a ladder: one folder per rung
        record = json.loads((out / LADDER_FILE).read_text())
        return finish(args, record, as_json=lambda r: {"out": str(out), **r},
                      as_text=lambda r: "\n".join(export_text(out / rung["dir"], read_export(out / rung["dir"])["fixres"])
                                                  for rung in r["rungs"]) + f"\nladder: {out / LADDER_FILE}")
    record = {"out": str(out), **read_export(out)["fixres"]}
    return finish(args, record, as_json=lambda r: r, as_text=lambda r: export_text(out, r))
