"""Where else a training run's metrics go, besides ``metrics.jsonl``: TensorBoard event files
and Weights & Biases, as timm's train.py offers (``--log-wandb``).

Both packages are optional (``pip install 'fixres[tensorboard]'`` / ``'fixres[wandb]'``).
TensorBoard: ``log_tensorboard`` None (the default) writes ``RUN/tensorboard`` when the
package is installed and skips silently when it is not; True requires it. W&B: only when
asked (``--log-wandb``); ``WANDB_MODE=offline`` logs into ``RUN/wandb`` without a network.
A run resumed from the checkpoint of step ``s`` drops the TensorBoard events after ``s``
(``purge_step``: they will be redone) and
continues the same W&B run (its id is kept in ``RUN/wandb-id``), so neither shows the redone
steps twice. Only the main process logs.
"""
from __future__ import annotations

import importlib.util
import numbers
import secrets
from pathlib import Path
from typing import Any

from ..core.errors import FixresError


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


def check_sinks(log_tensorboard: bool | None, log_wandb: bool) -> None:
    """Refuse, before any work, a sink that was asked for and cannot be had."""
    if log_tensorboard and not tensorboard_available():
        raise FixresError("--log-tensorboard needs the tensorboard package: pip install 'fixres[tensorboard]'")
    if log_wandb and not wandb_available():
        raise FixresError("--log-wandb needs the wandb package: pip install 'fixres[wandb]' "
                          "(WANDB_MODE=offline logs without a network)")


def _scalars(row: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class MetricSinks:
    """TensorBoard and/or W&B writers of one run (no-ops for the sinks not in use)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], *, tensorboard: bool | None, wandb: bool,
                 project: str | None, resume_step: int | None):
        """``resume_step``: the first step that a resumed run logs again (None: a new run)."""
        check_sinks(tensorboard, wandb)
        self.tb = self.wb = None
        if tensorboard or (tensorboard is None and tensorboard_available()):
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        if wandb:
            import wandb as wb
            id_file = run_dir / "wandb-id"
            run_id = id_file.read_text().strip() if resume_step is not None and id_file.is_file() else None
            if run_id is None:
                run_id = secrets.token_hex(6)
                id_file.write_text(run_id + "\n")
            self.wb = wb.init(project=project or "fixres", name=run_dir.name, id=run_id, resume="allow",
                              dir=str(run_dir), config=config)

    @property
    def names(self) -> list[str]:
        return [n for n, s in (("tensorboard", self.tb), ("wandb", self.wb)) if s is not None]

    def log(self, row: dict, step: int) -> None:
        values = _scalars(row)
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wb is not None:
            self.wb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()
        self.tb = self.wb = None
