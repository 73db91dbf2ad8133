"""The weights of a resolution-switchable network (:mod:`fixres.train.switchable`): every batch-norm
holds one copy per resolution, ``<bn>.paths.<i>.<tensor>``. Reading one path as the plain
architecture's weights is how every command opens such a checkpoint."""
from __future__ import annotations

import re

import torch

PATH_KEY = re.compile(r"^(.*)\.paths\.(\d+)\.(.+)$")


def is_switchable_state(state: dict) -> bool:
    return any(PATH_KEY.match(k) for k in state)


def collapse(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """The weights of the plain architecture with path ``index``'s batch-norms (``-1``: the last)."""
    paths = 1 + max(int(m.group(2)) for k in state if (m := PATH_KEY.match(k)))
    index = index % paths
    out = {}
    for key, value in state.items():
        m = PATH_KEY.match(key)
        if m is None:
            out[key] = value
        elif int(m.group(2)) == index:
            out[f"{m.group(1)}.{m.group(3)}"] = value
    return out


def path_tensors(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Path ``index``'s batch-norm tensors, under the plain architecture's names (a ladder rung)."""
    return {f"{m.group(1)}.{m.group(3)}": v for k, v in state.items()
            if (m := PATH_KEY.match(k)) and int(m.group(2)) == index}


