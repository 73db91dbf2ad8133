"""``fixres analyze`` as a library call: the crop settings of a model (with where each comes
from), the geometric prediction under every statistic, the sensitivity table, the optional
histogram; and its text and JSON reports."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import FixresError
from ..core.tables import table
from ..data.transforms import DEFAULT_CROP_PCT, check_resolution
from ..models.sources import ModelSource, declared_preprocessing
from .geometry import DEFAULT_RATIO, DEFAULT_SCALE, GEOMETRIC_NOTE, STATISTICS, Prediction, check_statistic, \
    compare_statistics, sensitivity
from .plot import plot_apparent_size
from .sizes import SizeScan, parse_size, scan_sizes, split_dir

MEAN_NAME = {"mean-ratio": "mean", "geometric": "geometric mean", "mean-size": "harmonic mean"}


@dataclass(frozen=True)
class CropSettings:
    """What the prediction needs of a training setup, and where each value comes from."""

    train_res: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    crop_pct: float
    origin: dict                  # field -> "flag", "<checkpoint> (fixres train)", "default", ...

    @classmethod
    def resolve(cls, source: ModelSource | None = None, *, train_res: int | None = None, scale=None, ratio=None,
                crop_pct: float | None = None) -> "CropSettings":
        """The model's record or declaration (``source``, read without its weights), each value
        overridden by the one given; without a model, the given values (``train_res`` required)
        and the defaults."""
        if train_res is not None:
            check_resolution(train_res, "train resolution")
        given = {"train_res": train_res, "scale": scale and tuple(scale), "ratio": ratio and tuple(ratio),
                 "crop_pct": crop_pct}
        if source is None:
            if train_res is None:
                raise FixresError("give --train-res K, or the model: --checkpoint PATH or --model NAME")
            defaults = {"scale": DEFAULT_SCALE, "ratio": DEFAULT_RATIO, "crop_pct": DEFAULT_CROP_PCT}
            values = {k: given[k] if given[k] is not None else defaults.get(k) for k in given}
            return cls(**values, origin={k: "flag" if given[k] is not None else "defaults" for k in given})
        prep = declared_preprocessing(source).override("flag", **given)
        return cls(prep.train_res, tuple(prep.scale), tuple(prep.ratio), prep.crop_pct,
                   {k: prep.source_of(k) for k in given})


@dataclass(frozen=True)
class Analysis:
    """Everything ``fixres analyze`` measured."""

    settings: CropSettings
    chosen: Prediction
    predictions: tuple[Prediction, ...]
    sensitivity: tuple[dict, ...]
    scan: SizeScan | None
    sizes: tuple[tuple[int, int], ...] | None
    plot: str | None
    from_model: bool

    def scan_info(self) -> dict | None:
        s = self.scan
        return None if s is None else {
            "root": str(s.root), "images": len(s.sizes), "distinct_sizes": len(set(s.sizes)),
            "skipped": len(s.skipped), "seconds": round(s.seconds, 3), "files_per_s": round(s.files_per_s)}


def analyze(settings: CropSettings, *, data: str | None = None, sizes=None, statistic: str = "mean-ratio",
            samples: int = 200_000, seed: int = 0, plot: str | None = None, from_model: bool = False) -> Analysis:
    """The geometric prediction for ``settings``: closed form (no ``data`` / ``sizes``), or torchvision's
    sampler simulated over the image sizes of ``data`` (a dataset's train split, a split, or an image
    folder) or the given ``sizes`` (``WxH`` strings or pairs). ``plot``: also write the histogram."""
    check_statistic(statistic)
    scan, source = None, None
    if sizes:
        sizes = [parse_size(s) if isinstance(s, str) else tuple(s) for s in sizes]
    elif data:
        root = split_dir(data)
        scan = scan_sizes(root)
        if not scan.sizes:
            raise FixresError(f"no readable image under {root}")
        sizes, source = scan.sizes, f"{len(scan.sizes)} sizes from {root}"
    kw = dict(scale=settings.scale, ratio=settings.ratio, crop_pct=settings.crop_pct, sizes=sizes, samples=samples,
              seed=seed)
    predictions = tuple(compare_statistics(settings.train_res, source=source, **kw))
    chosen = next(p for p in predictions if p.statistic == statistic)
    rows = tuple(sensitivity(settings.train_res, statistic=statistic, **kw))
    if plot:
        plot_apparent_size(plot, settings.train_res, statistic=statistic, source=source, **kw)
    return Analysis(settings, chosen, predictions, rows, scan, tuple(sizes) if sizes else None, plot, from_model)


def analysis_json(a: Analysis) -> dict:
    return {"note": GEOMETRIC_NOTE, "prediction": a.chosen.row(), "statistics": [p.row() for p in a.predictions],
            "sensitivity": list(a.sensitivity), "scan": a.scan_info(), "plot": a.plot,
            "settings_from": a.settings.origin}


def analysis_text(a: Analysis) -> str:
    p, scan_info = a.chosen, a.scan_info()
    lines = [f"Geometric prediction: train at {p.train_res}px -> test at {p.test_res}px ({p.factor:.3f}x; "
             f"resize the shorter side to {p.test_resize}, centre-crop {p.test_res}), matching {p.statistic}: "
             f"{STATISTICS[p.statistic][1]}.",
             f"  At K_test = K_train the {MEAN_NAME[p.statistic]} of z_test/z_train is {p.ratio_at_train_res:.4f} "
             f"(objects look {1 / p.ratio_at_train_res:.2f}x larger in training); at {p.test_res}px it is "
             f"{p.ratio_at_test_res:.4f}."]
    if p.closed_form:
        lines.append(f"  Closed form: square images, s ~ U[{p.scale[0]:g}, {p.scale[1]:g}], every crop accepted "
                     "(torchvision's rejection is ignored; pass --data or --sizes to simulate it).")
    else:
        shorter = [min(w, h) for w, h in a.sizes]
        lines.append(f"  Monte-Carlo: {p.samples:,} draws of torchvision's RandomResizedCrop (scale {p.scale[0]:g}-"
                     f"{p.scale[1]:g}, ratio {p.ratio[0]:.4g}-{p.ratio[1]:.4g}, 10 tries then centre crop: "
                     f"fallback in {100 * p.fallback_rate:.3g}% of draws), seed {p.seed}, over {p.source} "
                     f"({len(set(a.sizes))} distinct, shorter side {min(shorter)}-{max(shorter)}px).")
    if scan_info:
        lines.append(f"  Read {scan_info['images']} image headers in {scan_info['seconds']:.2f}s "
                     f"({scan_info['files_per_s']:,} files/s)"
                     + (f"; skipped {scan_info['skipped']} unreadable files." if scan_info["skipped"] else "."))
    lines += ["", "The three statistics" + (" (closed forms):" if p.closed_form else " (same draws):"),
              table([{**q.row(), "mark": "*" if q.statistic == p.statistic else ""} for q in a.predictions],
                    [("mark", "used", "s"), ("statistic", "statistic", "s"), ("matches", "matches", "s"),
                     ("ratio_at_train_res", f"at {p.train_res}px", ".4f"), ("test_res", "K_test", "d"),
                     ("factor", "x K_train", ".3f")]),
              "", f"Sensitivity ({p.statistic}): predicted K_test for RandomResizedCrop scale lower bound (rows) "
                  f"and test crop_pct (columns); change the training crops instead of the test resolution:",
              _sensitivity_table(a.sensitivity, p.scale[1])]
    if a.plot:
        lines += ["", f"Histogram of apparent-size ratios written to {a.plot}"]
    lines += ["", GEOMETRIC_NOTE]
    if a.from_model:
        lines.append("  Settings: " + "; ".join(f"{k} from {v}" for k, v in a.settings.origin.items()))
    return "\n".join(lines)


def _sensitivity_table(rows, scale_max: float) -> str:
    pcts = sorted({r["crop_pct"] for r in rows})
    grid: dict = {}
    for r in rows:
        grid.setdefault(r["scale_min"], {})[r["crop_pct"]] = r["test_res"]
    cells = [{"scale": f"{a:g}-{scale_max:g}", **{str(c): ("-" if grid[a][c] is None else str(grid[a][c]))
                                                  for c in pcts}} for a in grid]
    return table(cells, [("scale", "scale", "s")] + [(str(c), f"crop {c:g}", "s") for c in pcts])
