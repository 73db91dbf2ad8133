"""A model as ONNX: exported at one resolution (dynamic batch axis) and checked against PyTorch
with ONNX Runtime; the session that times it (``--engine onnxruntime``).

The exporter is the TorchScript-based one (``dynamo=False``): it needs no onnxscript and works
offline on torch 2.4-2.14 (the torch.export-based default from 2.9 needs onnxscript).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..core.errors import FixresError

ONNX_OPSET = 17
# ONNX Runtime and PyTorch sum in different orders; float32 logits of a ResNet-50 differ by
# ~1e-5. Allowed: 1e-4 times the largest logit magnitude (at least 1e-4).
ONNX_TOLERANCE = 1e-4


class OnnxExportError(FixresError):
    """The model cannot be exported to ONNX (an operator the exporter does not support...)."""


def example_inputs(n: int, chans: int, res: int) -> torch.Tensor:
    """Fixed pseudo-random normalised images for the parity checks."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, chans, res, res, generator=g)


def require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise FixresError(f"ONNX export needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
                          "pip install 'fixres[onnx]'")


def export_onnx(model: nn.Module, path: Path, test_res: int, chans: int, *, opset: int = ONNX_OPSET) -> dict:
    """Write ``model`` as ONNX (input ``input`` N x C x R x R, output ``logits``; N dynamic) and check it.

    The check runs ONNX Runtime on a batch of a different size than the one traced, so it
    also proves the batch axis is dynamic. Returns what was checked; raises FixresError
    if the outputs differ by more than the tolerance.
    """
    import onnx
    import onnxruntime

    traced = example_inputs(2, chans, test_res)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation and tracer warnings
        # dynamo=False: the TorchScript-based exporter needs no onnxscript and works offline
        # on torch 2.4-2.14; the torch.export-based one (the default from 2.9) needs onnxscript.
        try:
            torch.onnx.export(model, (traced,), str(path), dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, do_constant_folding=True)
        except Exception as e:      # the exporter raises many kinds: unsupported operators, tracing errors
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OnnxExportError(f"{type(model).__name__} does not export to ONNX at {test_res}px ({reason[:200]})") \
                from None
    onnx.checker.check_model(str(path))
    session = onnx_session(path)
    check = example_inputs(3, chans, test_res)
    with torch.no_grad():
        expected = model(check)
    got = torch.from_numpy(session.run(["logits"], {"input": check.numpy()})[0])
    if got.shape != expected.shape:
        raise FixresError(f"ONNX model output shape {tuple(got.shape)} differs from PyTorch's {tuple(expected.shape)}")
    diff = float((got - expected).abs().max())
    tolerance = ONNX_TOLERANCE * max(1.0, float(expected.abs().max()))
    if not diff <= tolerance:
        raise FixresError(f"ONNX Runtime logits differ from PyTorch's by {diff:.3g} (tolerance {tolerance:.3g})")
    return {"file": path.name, "opset": opset, "input": "input", "output": "logits",
            "input_size": ["batch", chans, test_res, test_res], "max_abs_diff": diff, "tolerance": tolerance,
            "checked_batch": int(check.shape[0]), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}




def onnx_runner(path: Path, engine: str = "onnxruntime", *, threads: int | None = None,
                device: torch.device | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], str, str]:
    """The exported ``path`` compiled by ``engine`` (``onnxruntime`` or ``openvino``): ``(run,
    where, version)``, ``run(x)`` the logits of a float32 N x C x R x R array, ``where`` the
    device it runs on (``cpu (T threads)`` or ``cuda``), ``version`` the engine and its version.
    OpenVINO compiles for its CPU plugin in float32 (its default on CPUs with bf16 units is bf16:
    not the exported graph) with a latency hint and ``threads`` inference threads."""
    if engine == "onnxruntime":
        import onnxruntime
        session = onnx_session(path, threads=threads, device=device)
        where = _cpu(threads) if session.get_providers()[0] == "CPUExecutionProvider" else "cuda"
        return (lambda x: session.run(["logits"], {"input": x})[0]), where, f"onnxruntime {onnxruntime.__version__}"
    if engine == "openvino":
        import openvino
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                  **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
        compiled = openvino.Core().compile_model(str(path), "CPU", config)
        request, output = compiled.create_infer_request(), compiled.output(0)
        return (lambda x: request.infer({"input": x})[output]), _cpu(threads), f"openvino {openvino.__version__.split('-')[0]}"
    raise ValueError(f"unknown ONNX engine {engine!r}")


def _cpu(threads: int | None) -> str:
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})" if threads else "cpu"


def onnx_session(path: Path, threads: int | None = None, device: torch.device | None = None):
    """An ONNX Runtime session of ``path``: the CUDA provider on a GPU when the installed
    onnxruntime has it, else the CPU one with ``threads`` intra-op threads."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if device is not None and device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(str(path), options, providers=providers)
