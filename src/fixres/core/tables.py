"""Plain-text tables for terminals and reports (library code, no CLI dependency)."""
from __future__ import annotations


def cell(row: dict, key: str, spec: str) -> str:
    """One cell: blank when the row has no such key, ``n/a`` when its value is None (not
    applicable, e.g. top-5 with 5 classes or fewer), a string as it is, else formatted."""
    if key not in row:
        return ""
    value = row[key]
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else format(value, spec)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A right-aligned plain-text table. ``columns``: (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([cell(r, k, f) for k, _, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pct(value: float | None) -> str:
    """A percentage figure, or ``n/a`` (not applicable)."""
    return "n/a" if value is None else f"{value:.2f}"
