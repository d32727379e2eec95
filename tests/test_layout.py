"""The house rules of the code layout, checked on the source: no import cycle between modules,
between the library's packages or between the top-level packages (imports inside functions
count); the top-level packages import only downwards, in the order README.md states; no private
name imported from another module; tools are thin shims that edit no ``sys.path`` and import no
other tool."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# Top-level packages, highest first: each may import only those after it.
FLOORS = ("commands", "training", "generator", "layers", "rmnet")
PACKAGES = FLOORS
# Forwards the module names earlier versions wrote into prototxts to ``layers`` (by importlib,
# at the time Caffe imports them): the one place ``rmnet`` reaches up; nothing may import it.
LEGACY_ALIASES = "rmnet.layers"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    mods = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {m: p for m, p in mods.items()
            if m != LEGACY_ALIASES and not m.startswith(LEGACY_ALIASES + ".")}


def imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported project module, names taken from it, line) for every import in the file,
    at any depth (function bodies included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules:
                    out.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in modules:                      # from pkg import module
                    out.append((sub, [], node.lineno))
                elif node.module in modules:
                    out.append((node.module, [a.name], node.lineno))
    return out


def graph(key) -> dict[str, set[str]]:
    mods = project_modules()
    g: dict[str, set[str]] = {}
    for name, path in mods.items():
        for target, _, _ in imports(path, mods):
            a, b = key(name), key(target)
            if a != b:
                g.setdefault(a, set()).add(b)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    """``rmnet.eval.metrics`` -> ``rmnet.eval``; top-level modules stand for themselves."""
    return ".".join(module.split(".")[:2])


def top_level(module: str) -> str:
    """``rmnet.eval.metrics`` -> ``rmnet``."""
    return module.split(".")[0]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    assert cycles(graph(lambda m: m)) == []


def test_no_import_cycle_between_packages():
    assert cycles(graph(package_of)) == []


def test_no_import_cycle_between_top_level_packages():
    assert cycles(graph(top_level)) == []


def test_top_level_packages_import_only_downwards():
    g = graph(top_level)
    upward = sorted((a, b) for a, targets in g.items() for b in targets
                    if FLOORS.index(b) < FLOORS.index(a))
    assert upward == []
    assert set(g) | {b for t in g.values() for b in t} == set(FLOORS)


def test_floor_check_sees_an_upward_import(tmp_path):
    """The graph really reads function-level imports: a module that imports from a package above
    it inside a function is seen as an edge."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from generator import render\n")
    mods = {"generator": REPO / "generator" / "__init__.py"}
    assert imports(src, mods) == [("generator", ["render"], 2)]


def test_nothing_imports_the_legacy_layer_aliases():
    names = set(project_modules()) | {LEGACY_ALIASES} | {
        module_name(p) for p in (REPO / "rmnet" / "layers").glob("*.py")}
    legacy = {n: REPO for n in names if n.split(".")[:2] == ["rmnet", "layers"]}
    users = [f"{p.relative_to(REPO)}:{line}" for p in project_modules().values()
             for _, _, line in imports(p, legacy)]
    assert users == []


def test_no_private_name_imported_from_another_module():
    mods = project_modules()
    bad = [f"{path.relative_to(REPO)}:{line} imports {name} from {target}"
           for path in mods.values() for target, names, line in imports(path, mods)
           for name in names if name.startswith("_")]
    bad += [f"{p.relative_to(REPO)}:{line} imports {name} from {target}"
            for p in (REPO / "tests").glob("*.py") for target, names, line in imports(p, mods)
            for name in names if name.startswith("_")]
    assert bad == []


def test_tools_are_shims_over_the_library():
    tools = sorted((REPO / "tools").glob("*.py"))
    assert tools
    for path in tools:
        text = path.read_text()
        tree = ast.parse(text)
        froms = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert [(n.module, [a.name for a in n.names]) for n in froms] == \
            [(f"commands.{path.stem}", ["main"])], path
        assert "sys.path" not in text, path
        assert (REPO / "commands" / f"{path.stem}.py").is_file(), path
