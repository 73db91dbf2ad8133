"""One pass over a split for many evaluations: a model at every test geometry (and, with
corruptions, on every corrupted version of each image), each image decoded once.

Each result equals :func:`fixres.measure.infer.evaluate` at that geometry with the same batch
size (tested); a ``before_view`` hook lets several models share the pass (a ladder's rungs).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..core.errors import FixresError
from ..core.runtime import Runtime
from ..data.index import SplitIndex
from ..data.loader import Batch
from ..data.pipeline import sweep_batches, variant_batches
from ..data.preprocessing import Preprocessing
from .infer import EvalResult, Tally, infer


def _per_geometry(batches, n: int, before_view: Callable[[int], None] | None = None):
    """Flatten each multi-geometry :class:`Batch` into ``n`` plain ones, geometry order;
    ``before_view(g)`` runs before geometry ``g``'s batch goes to the model."""
    for batch in batches:
        for g in range(n):
            if before_view is not None:
                before_view(g)
            yield Batch(None if batch.images is None else batch.images[g], batch.labels, batch.indices, batch.skipped)


@torch.no_grad()
def sweep_model(model: nn.Module, split_index: SplitIndex, prep: Preprocessing,
                geometries: Sequence[tuple[int, float]], rt: Runtime, *, batch_size: int = 100,
                label: str = "sweep", skipped: list | None = None,
                before_view: Callable[[int], None] | None = None, variants: Sequence[str | None] = (None,),
                seed: int = 0, temperatures: Sequence[float] | None = None,
                tallies_out: list | None = None) -> list[EvalResult]:
    """Evaluate ``model`` on ``split_index`` at every ``(test_res, crop_pct)`` of ``geometries``
    (``prep``'s normalisation and interpolation) in one pass over the images.

    Args:
        label: the progress bar's text.
        skipped: if given, extended with the ``(path, reason)`` of files that could not be read.
        before_view: called with a geometry's position before each of its forwards (a ladder
            puts that rung's weights in place: several models, one decode per image).
        variants: ``None`` (the clean image) and corruption labels (``gaussian_noise:3``,
            :mod:`fixres.data.corruptions`), each applied to the decoded image, seeded by ``seed``.
        temperatures: per geometry, the temperature of the calibration figures (default 1).
        tallies_out: if given, extended with the tallies (their kept logits: a temperature fit).

    Returns:
        One :class:`EvalResult` per variant and geometry, variant-major; each clean one equals
        :func:`fixres.measure.infer.evaluate` at that geometry with the same batch size.
    """
    views = tuple(prep.test_view(r, c) for r, c in geometries)
    if not views:
        raise FixresError("no test geometry to sweep")
    variants = tuple(variants)
    # One decode per image for every geometry, through the device's data pipeline
    # (fixres.data.pipeline; auto: the fast path on CUDA, PIL workers on the CPU; corruptions: PIL).
    loader = (sweep_batches(split_index, views, rt, batch_size=batch_size) if variants == (None,)
              else variant_batches(split_index, views, variants, seed, rt, batch_size=batch_size))
    temps = list(temperatures or [1.0] * len(views))
    tallies = [Tally(rt.device, temperature=temps[g % len(views)], keep_logits=tallies_out is not None)
               for g in range(len(variants) * len(views))]
    if rt.dist.is_main:     # files refused when scanned count once, on one rank
        for tally in tallies:
            tally.add(None, torch.zeros(0, dtype=torch.long), len(split_index.skipped))
        if skipped is not None:
            skipped.extend(split_index.skipped)
    n, g_count = len(tallies), len(views)
    batches = rt.progress(loader, f"{label} x{n}")
    hook = None if before_view is None else (lambda k: before_view(k % g_count))
    flat = _per_geometry(batches, n, hook)
    for i, (logits, batch) in enumerate(infer(model, flat, prep.normalizer(rt.channels_last), rt)):
        g = i % n
        tallies[g].add(logits, batch.labels, len(batch.skipped))
        if g == 0 and skipped is not None:
            skipped.extend(batch.skipped)
    if tallies_out is not None:
        tallies_out.extend(tallies)
    return [tally.result(rt.dist, test_res=v.test_res, crop_pct=v.crop_pct, interpolation=v.interpolation,
                         crop_mode=v.crop_mode) for tally, v in zip(tallies, views * len(variants))]
