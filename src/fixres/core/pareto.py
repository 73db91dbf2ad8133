"""The Pareto front of (cost, accuracy) points: a choice rule of the sweep and the ladder, and a line of the cost plots."""
from __future__ import annotations

from typing import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(cost, accuracy)`` that no other point beats, i.e. has a lower
    or equal cost and a higher accuracy, or a lower cost and an equal one; in increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, top = [], float("-inf")
    for i in order:
        if points[i][1] > top:
            front.append(i)
            top = points[i][1]
    return front
