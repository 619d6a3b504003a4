"""The shape of the house (docs/architecture.md): which package may import which, no import
circles, no private names across packages, no source file over 600 lines.

Read from the source with ``ast`` (nothing is imported), so a lazy import inside a function
counts the same as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "src"
MAX_LINES = 600

# A module may import from its own package and from packages on a strictly lower layer.
LAYERS: dict[str, int] = {
    "spectrumkd": 0,  # the package's own __init__ (its version)
    "spectrumkd.io": 0,
    "spectrumkd.batching": 0,
    "spectrumkd.host_memory": 0,
    "spectrumkd.data": 1,
    "spectrumkd.models": 2,
    "spectrumkd.scoring": 3,
    "spectrumkd.curation": 4,
    "spectrumkd.integrations": 5,
    "spectrumkd.distillation": 6,
    "spectrumkd.evaluation": 7,
    "spectrumkd.report": 8,
    "spectrumkd.console": 9,
    "spectrumkd.jobs": 9,
    "spectrumkd.demo": 10,
    "spectrumkd.cli": 11,
    "spectrumkd.__main__": 12,
    "experiments": 13,  # the experiment runner stands on the library, never the reverse
}


def module_name(path: Path) -> str:
    base = SOURCES if SOURCES in path.parents else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    files = sorted((SOURCES / "spectrumkd").rglob("*.py"))
    files += sorted((ROOT / "experiments").rglob("*.py"))
    return files


MODULES = {module_name(path): path for path in source_files()}


def resolve(importer: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def imports_of(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it); ``from pkg import submodule`` counts as the
    submodule."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, path, node)
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if f"{target}.{n}" in MODULES]
            found += [(f"{target}.{n}", []) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                found.append((target, rest))
    return [(target, names) for target, names in found if target.split(".")[0] in TOPS]


TOPS = {"spectrumkd", "experiments"}


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        key = ".".join(parts[:size])
        if key in LAYERS:
            return key, LAYERS[key]
    raise KeyError(f"{module} has no layer: add it to LAYERS and docs/architecture.md")


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    home, level = layer_of(module)
    wrong = []
    for target, _ in GRAPH[module]:
        other, other_level = layer_of(target)
        if other != home and other_level >= level:
            wrong.append(f"{target} (layer {other_level})")
    assert not wrong, f"{module} (layer {level}) imports upward or sideways: {wrong}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_packages(module):
    home, _ = layer_of(module)
    wrong = [
        f"{target}.{name}"
        for target, names in GRAPH[module]
        for name in names
        if name.startswith("_") and not name.startswith("__") and layer_of(target)[0] != home
    ]
    assert not wrong, f"{module} imports private names of another package: {wrong}"


def test_no_import_circles():
    edges = {m: {t for t, _ in GRAPH[m] if t in MODULES} for m in MODULES}
    # A package's __init__ re-exporting its modules is not a circle unless a module imports the
    # __init__ back.
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_source_file_over_600_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by idea"


def test_ignore_index_is_defined_once():
    definitions = [
        name
        for name, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "IGNORE_INDEX" for t in node.targets)
    ]
    assert definitions == ["spectrumkd.batching"]
