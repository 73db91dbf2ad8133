"""The structure the package promises a reader: the folders are the layers and imports point down
them, few loose modules, one reader of timm's data config, small functions and classes, no private
name borrowed from another module, nothing inside the package importing its root."""
import ast

from test_imports import PACKAGE, import_graph

# Highest first: a module may import modules of its own layer or of the layers below it.
LAYERS = ("cli", "experiments", "deploy", "adapt", "train", "measure", "analyze", "models", "data", "core")
LOOSE = ("__init__", "__main__", "version")          # the package root's own files


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _sources():
    return {p: ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def test_the_top_level_holds_only_packages_and_a_few_modules():
    loose = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in LOOSE]
    assert len(loose) <= 8, loose
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} <= set(LAYERS)


def test_imports_point_down_the_layers():
    upward = []
    for module, imported in import_graph().items():
        here = _layer(module)
        for target in imported:
            there = _layer(target)
            if here is not None and there is not None and there < here:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_only_the_preprocessing_resolver_reads_timms_data_config():
    readers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if "resolve_data_config" in p.read_text() or "resolve_model_data_config" in p.read_text())
    assert readers == ["data/preprocessing.py"]


def test_functions_and_classes_are_small():
    big = []
    for path, tree in _sources().items():
        for node in ast.walk(tree):
            size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            limit = (60 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     else 250 if isinstance(node, ast.ClassDef) else None)
            if limit and size > limit:
                big.append(f"{path.relative_to(PACKAGE)}:{node.name} {size} lines")
    assert big == []


def test_no_private_name_crosses_modules_and_nothing_imports_the_package_root():
    crossing, root = [], []
    for path, tree in _sources().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            internal = node.level > 0 or (node.module or "").startswith("fixres")
            if not internal:
                continue
            crossing += [f"{path.relative_to(PACKAGE)}: {a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__")]
            package = path.parent.relative_to(PACKAGE.parent).parts       # ("fixres", "models") ...
            base = package[:len(package) - node.level + 1] if node.level else tuple((node.module or "").split("."))
            if base == ("fixres",) and not (node.level and node.module):
                root.append(f"{path.relative_to(PACKAGE)}: imports the package root")
    assert crossing == []
    assert root == []
