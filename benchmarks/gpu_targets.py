"""The targets of the fast data path, side by side, from the JSON that benchmarks/gpu_check.sh
writes: each measured ratio, what it must reach, met or not (or missing, when the step that
measures it failed or was cut short). Then the figures that inform the next decisions: the
crop stage before/after (benchmarks/profile_crop.py) and the compiled / larger-batch
synthetic step (section 4 of benchmarks/pipeline_gpu.py).

    python benchmarks/gpu_targets.py OUT_DIR        # reads bench.json, compile.json, profile.json there

Prints only; exits 0 whether targets are met or not (the figures are the result).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

FAST, WORKERS = "fast device (store)", "fast workers (store)"


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def ratio(rates: dict, num: str, den: str) -> float | None:
    a, b = rates.get(num), rates.get(den)
    return a / b if a and b else None


def targets(bench: dict) -> list[tuple[str, float | None, float, str]]:
    """``(what, measured, needed, unit)`` of every target (measured None when missing): fast
    >= 0.9 x synthetic at every training resolution and in the sweep, fast >= 2 x torchvision
    (same workers) at the lowest training resolution."""
    args, train = bench.get("args", {}), bench.get("train", {})
    model, resolutions = args.get("model", "model"), args.get("res", [128, 224])
    rows = []
    for res in resolutions:
        rates = train.get(str(res), {}).get("images_per_s", {})
        rows.append((f"{model} train {res} px: fast (nvJPEG) / synthetic", ratio(rates, FAST, "synthetic"), 0.9, "x"))
    low = min(resolutions)
    rates = train.get(str(low), {}).get("images_per_s", {})
    rows.append((f"{model} train {low} px: fast (nvJPEG) / torchvision, same workers",
                 ratio(rates, FAST, "torchvision"), 2.0, "x"))
    sweep_res = args.get("sweep") or [224, 384]
    rows.append((f"sweep {min(sweep_res)}-{max(sweep_res)} px: fast (nvJPEG) / synthetic",
                 ratio(bench.get("sweep", {}).get("images_per_s", {}), FAST, "synthetic"), 0.9, "x"))
    return rows


def informative(bench: dict) -> list[str]:
    """Ratios that are not targets but explain them (the workers decoder, the pil sweep)."""
    lines = []
    for res, row in sorted(bench.get("train", {}).items()):
        rates = row.get("images_per_s", {}) if isinstance(row, dict) else {}
        if rates.get("synthetic"):
            lines.append(f"train {res} px img/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
            r = ratio(rates, WORKERS, "synthetic")
            if r:
                lines.append(f"  fast workers decoder / synthetic {r:.2f}; / torchvision "
                             f"{ratio(rates, WORKERS, 'torchvision') or 0:.2f}")
    sweep = bench.get("sweep", {}).get("images_per_s", {})
    if sweep:
        lines.append("sweep img/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in sweep.items()))
    return lines


def top1_rows(bench: dict) -> list[tuple[str, float | None, float, str]]:
    """Top-1 through the nvJPEG path within 0.1 point of the PIL path, at each test resolution."""
    top1 = bench.get("top1", {})
    rows = []
    for res, row in top1.items():
        if isinstance(row, dict) and "pil" in row and "fast device" in row:
            delta = abs(row["fast device"]["top1"] - row["pil"]["top1"])
            rows.append((f"top-1 at {res} px: |fast device - pil| (points)", delta, 0.1, "max"))
    return rows or [("top-1 through nvJPEG vs pil", None, 0.1, "max")]


def status(measured: float | None, needed: float, unit: str) -> str:
    if measured is None:
        return "MISSING"
    ok = measured <= needed if unit == "max" else measured >= needed
    return "met" if ok else "NOT MET"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    bench, compiled, profile = (load(out / n) for n in ("bench.json", "compile.json", "profile.json"))
    print(f"targets (issue 14), from {out}/bench.json: {bench.get('gpu', '?')}, {bench.get('date', '?')}, "
          f"torch {bench.get('versions', {}).get('torch', '?')}")
    print(f"{'target':66s} {'measured':>9s} {'needed':>9s}  status")
    for what, measured, needed, unit in targets(bench) + top1_rows(bench):
        shown = "-" if measured is None else f"{measured:.2f}"
        need = f"<= {needed:.2f}" if unit == "max" else f">= {needed:.2f}"
        print(f"{what:66s} {shown:>9s} {need:>9s}  {status(measured, needed, unit)}")
    for line in informative(bench):
        print(line)
    rows = compiled.get("compile", {}).get("rows", {})
    if rows:
        print(f"synthetic step at {compiled['compile'].get('res')} px (section 4 of pipeline_gpu.py):")
        for name, row in rows.items():
            if "images_per_s" in row:
                print(f"  {name:32s} {row['images_per_s']:9,.0f} img/s  x{row.get('of_eager', 0):.2f} of eager, "
                      f"warm-up {row['warmup_s']} s")
            else:
                print(f"  {name:32s} {row.get('error') or row.get('skipped')}")
    else:
        print("compiled / larger-batch synthetic step: MISSING")
    results = profile.get("results", {})
    if results:
        print(f"crop stage, {profile.get('batch')} images -> {profile.get('res')} px, chunk {profile.get('chunk')} "
              f"(profile_crop.py; bit-identical: {profile.get('bit_identical')}):")
        for name, row in results.items():
            total = row["profile"]["total"]
            print(f"  {name:24s} {row['images_per_s']:9,.0f} img/s, {total['kernels']} kernels, "
                  f"{total['cpu_ms']:.1f} ms CPU, {total['device_ms']:.1f} ms device per batch")
        for c, rates in profile.get("by_chunk", {}).items():
            print(f"  chunk {c}: " + ", ".join(f"{k} {v:,.0f} img/s" for k, v in rates.items()))
        sweep = profile.get("sweep", {})
        if sweep:
            print(f"  eval at {sweep['resolutions']}: " + ", ".join(f"{k} {v:,.0f} img/s"
                                                                  for k, v in sweep["images_per_s"].items()))
    else:
        print("crop stage profile: MISSING")


if __name__ == "__main__":
    main()
