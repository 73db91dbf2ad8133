"""``fixres export``: a folder timm loads as it is (config.json + model.safetensors), optionally ONNX."""
from __future__ import annotations

from ..deploy.export import ONNX_TOLERANCE, export_checkpoint, read_export
from .common import add_model_source, model_source, print_json


def register(sub) -> None:
    p = sub.add_parser("export", help="write a timm-loadable folder (and optionally ONNX) for a checkpoint",
                       description="Write OUT/config.json + OUT/model.safetensors so that "
                                   "timm.create_model('local-dir:OUT', pretrained=True) builds the model and "
                                   "timm's data config of that model gives the test preprocessing "
                                   "(resize floor(test_res / crop_pct), centre crop test_res). Both input_size and "
                                   "test_input_size are the test resolution; the training resolution is recorded "
                                   "under config.json's 'fixres' key. OUT must not exist or be empty.")
    add_model_source(p, exclude=("restrict_labels",))
    p.add_argument("--out", required=True, help="folder to create (refused if it exists and is not empty)")
    p.add_argument("--onnx", action="store_true",
                   help="also write model.onnx at the test resolution (dynamic batch axis) and check it against "
                        f"PyTorch with ONNX Runtime (max abs diff <= {ONNX_TOLERANCE:g} x max(1, |logit|)); "
                        "needs pip install 'fixres[onnx]'")
    p.add_argument("--test-res", type=int, default=None, help="test resolution to record (default: the checkpoint's)")
    p.add_argument("--crop-pct", type=float, default=None, help="centre-crop fraction to record (default: the "
                                                                "checkpoint's)")
    p.add_argument("--json", action="store_true", help="print the export record (config.json's 'fixres' part) as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    out = export_checkpoint(model_source(args), args.out, onnx=args.onnx, test_res=args.test_res,
                            crop_pct=args.crop_pct)
    record = read_export(out)["fixres"]
    if args.json:
        print_json({"out": str(out), **record})
        return 0
    adapted = (record.get("adaptation") or {}).get("method")
    print(f"exported {record['model']} to {out}: trained at {record['train_res']}px, "
          + (f"adapted ({adapted}), " if adapted else "")
          + f"test preprocessing: resize {record['resize']}, centre crop {record['test_res']} "
          f"(crop_pct {record['crop_pct']:g}), {record['interpolation']}")
    print(f"  timm: timm.create_model('local-dir:{out}', pretrained=True) gives fixres's logits "
          f"(max abs diff {record['timm_max_abs_diff']:.3g})")
    if record.get("onnx"):
        o = record["onnx"]
        shape = ", ".join(map(str, o["input_size"]))
        print(f"  onnx: {o['file']} (opset {o['opset']}, input {o['input']!r} [{shape}]); "
              f"ONNX Runtime vs PyTorch max abs diff {o['max_abs_diff']:.3g} (tolerance {o['tolerance']:.3g})")
    return 0
