"""Label spaces: what each output of a model means, and which dataset folder is which output.

A model predicts over ITS label space (a fixres checkpoint: the class folders it was trained
on; ImageNet-1k weights: 1,000 WordNet ids, described by timm's ``ImageNetInfo``; a timm
folder: its ``config.json``'s ``label_names``; or a ``--class-map`` file as timm's
validate.py reads it: one class folder name per line, its line number the index). A dataset
is bound to it folder by folder (:func:`bind`): a folder matches a label by its name (the
wnid ``n01440764``) or by one of the label's descriptions ("goldfish", "Carassius auratus";
case and ``_`` ignored). A dataset may hold a SUBSET of the labels (a few ImageNet classes, an
ImageNet-R/-A style folder): it is then evaluated in the full label space (standard top-1),
or, with ``restrict``, over its own classes only (argmax among them: the ImageNet-R/-A
convention), the model's classifier cut down to those outputs.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..core.errors import FixresError

NO_LABELS = "none (outputs are numbered)"


def _key(text: str) -> str:
    return " ".join(text.replace("_", " ").split()).casefold()


@dataclass(frozen=True)
class LabelSpace:
    """The meaning of each output: ``names[i]`` (what folders are matched against first) and,
    when known, ``descriptions[i]`` (comma-separated synonyms, e.g. ImageNet's)."""

    names: tuple[str, ...]
    descriptions: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self):
        if self.descriptions and len(self.descriptions) != len(self.names):
            raise ValueError("one description per label name")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def described(self) -> bool:
        return self.source != NO_LABELS

    def display(self, index: int) -> str:
        """The label as a person reads it: the first synonym of its description, else its name."""
        if self.descriptions and self.descriptions[index]:
            return self.descriptions[index].split(",")[0].strip()
        return self.names[index]

    def _lookup(self) -> dict[str, set[int]]:
        table: dict[str, set[int]] = {}
        for i, name in enumerate(self.names):
            table.setdefault(_key(name), set()).add(i)
        for i, text in enumerate(self.descriptions):
            for synonym in text.split(","):
                if synonym.strip():
                    table.setdefault(_key(synonym), set()).add(i)
        return table

    def subset(self, indices: Sequence[int], why: str) -> "LabelSpace":
        return LabelSpace(tuple(self.names[i] for i in indices),
                          tuple(self.descriptions[i] for i in indices) if self.descriptions else (),
                          f"{self.source}, {why}")


@dataclass(frozen=True)
class Binding:
    """A dataset bound to a label space: ``folder_index[folder]`` is the output index the
    folder's images are labelled with; ``kept`` the model outputs kept when restricted."""

    space: LabelSpace
    folder_index: Mapping[str, int]
    kept: tuple[int, ...] | None = None          # None: the full label space
    full_size: int = 0                            # the model's number of outputs
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def restricted(self) -> bool:
        return self.kept is not None


def match_folders(space: LabelSpace, folders: Iterable[str], where: str) -> dict[str, int]:
    """Each folder's label index (by name, then by description); a folder that matches no label,
    or more than one, is one clear error naming it (and the three closest labels)."""
    folders = list(folders)
    exact = {name: i for i, name in enumerate(space.names)}
    table = space._lookup() if any(f not in exact for f in folders) else {}
    out: dict[str, int] = {}
    for folder in folders:
        if folder in exact:
            out[folder] = exact[folder]
            continue
        hits = table.get(_key(folder), set())
        if len(hits) == 1:
            out[folder] = next(iter(hits))
            continue
        if len(hits) > 1:
            names = ", ".join(f"{space.names[i]} ({space.display(i)})" for i in sorted(hits))
            raise FixresError(f"class folder {folder!r} of {where} matches several labels: {names}; rename it to one "
                              "of these names")
        candidates = list(dict.fromkeys([*space.names, *(s.strip() for d in space.descriptions
                                                          for s in d.split(",") if s.strip())]))
        close = difflib.get_close_matches(folder, candidates, n=3, cutoff=0.0)
        hint = f"; closest: {', '.join(close)}" if close and space.described else (
            "; its outputs are not named: give --class-map FILE (one class folder name per line)")
        raise FixresError(f"class mismatch: folder {folder!r} of {where} matches no class of the model's label "
                          f"space ({len(space)} labels, {space.source or 'unnamed'}){hint}")
    return out


def bind(space: LabelSpace, folders: Iterable[str], where: str, *, restrict: bool = False,
         valid: tuple[int, ...] | None = None) -> Binding:
    """Bind dataset folders to a label space (see the module docstring). ``restrict``: keep the
    outputs of the dataset's classes; ``valid``: keep these outputs (timm's ``--valid-labels``,
    in the file's order), every folder being one of them."""
    if (restrict or valid is not None) and not space.described:
        flag = "--valid-labels" if valid is not None else "--restrict-labels"
        raise FixresError(f"{flag} needs a label space: this model's outputs are not named (give --class-map FILE: "
                          "one class folder name per line, its line number the output index)")
    mapping = match_folders(space, folders, where)
    if valid is not None:
        out_of_range = [i for i in valid if not 0 <= i < len(space)]
        if out_of_range:
            raise FixresError(f"--valid-labels: index {out_of_range[0]} is not an output of the model "
                              f"({len(space)} outputs, 0-{len(space) - 1})")
        outside = [f for f, i in mapping.items() if i not in set(valid)]
        if outside:
            f = outside[0]
            raise FixresError(f"--valid-labels: class folder {f!r} of {where} is output {mapping[f]} "
                              f"({space.display(mapping[f])}), which the file does not list")
        position = {index: k for k, index in enumerate(valid)}
        return Binding(space.subset(valid, f"the {len(valid)} --valid-labels outputs"),
                       {f: position[i] for f, i in mapping.items()}, tuple(valid), len(space))
    if not restrict:
        return Binding(space, mapping, None, len(space))
    kept = tuple(sorted(set(mapping.values())))
    position = {index: k for k, index in enumerate(kept)}
    return Binding(space.subset(kept, f"restricted to the dataset's {len(kept)} classes"),
                   {f: position[i] for f, i in mapping.items()}, kept, len(space))


# ----------------------------------------------------------------------------- where label spaces come from
def imagenet_space(num_classes: int) -> LabelSpace | None:
    """ImageNet-1k (or 22k/12k) as timm describes it, for a model with that many outputs."""
    from timm.data import ImageNetInfo, infer_imagenet_subset
    subset = infer_imagenet_subset({"num_classes": num_classes})     # timm's own num_classes -> subset rule
    if subset is None:
        return None
    try:
        info = ImageNetInfo(subset)
    except Exception:            # a subset whose description files this timm does not ship
        return None
    names = tuple(info.label_names())
    return LabelSpace(names, tuple(info.index_to_description(i) for i in range(len(names))),
                      f"{subset} (timm ImageNetInfo)")


def read_class_map(path: str | Path, num_classes: int | None = None) -> LabelSpace:
    """timm's validate.py ``--class-map`` text format: one class (folder) name per line, the
    line number is the output index. Blank lines are refused (they would shift every index)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise FixresError(f"class map {path}: {e.strerror or e}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names or any(not n for n in names):
        raise FixresError(f"class map {path}: expected one class name per line, no blank lines")
    seen: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if name in seen:
            raise FixresError(f"class map {path}: {name!r} on line {number} is already on line {seen[name]}")
        seen[name] = number
    if num_classes is not None and len(names) != num_classes:
        raise FixresError(f"class map {path} names {len(names)} classes, the model has {num_classes} outputs")
    return LabelSpace(tuple(names), source=f"class map {path}")


def read_valid_labels(path: str | Path) -> tuple[int, ...]:
    """timm validate.py's ``--valid-labels`` file: one output index per line (blank lines ignored)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise FixresError(f"valid labels {path}: {e.strerror or e}") from None
    values: list[int] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            values.append(int(line.strip()))
        except ValueError:
            raise FixresError(f"valid labels {path}, line {number}: {line.strip()!r} is not an output index") from None
    if not values:
        raise FixresError(f"valid labels {path}: no index (expected one integer per line)")
    if len(set(values)) != len(values):
        twice = next(v for v in values if values.count(v) > 1)
        raise FixresError(f"valid labels {path}: index {twice} appears twice")
    return tuple(values)


def config_space(label_names, num_classes: int, where: str) -> LabelSpace | None:
    """``label_names`` of a timm ``config.json`` / pretrained_cfg (a list, or {index: name})."""
    if not label_names:
        return None
    if isinstance(label_names, Mapping):
        label_names = [label_names.get(str(i), label_names.get(i)) for i in range(num_classes)]
    names = tuple(str(n) for n in label_names)
    if len(names) != num_classes or any(n == "None" for n in names):
        return None
    return LabelSpace(names, source=f"label_names of {where}")


def numbered_space(num_classes: int) -> LabelSpace:
    return LabelSpace(tuple(str(i) for i in range(num_classes)), source=NO_LABELS)
