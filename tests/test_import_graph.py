"""The import graph of lepton_edge and firmware_bridge has no cycle (docs/DESIGN.md, "Layers").

Every import counts: at module level, inside functions (lazy imports), under ``if TYPE_CHECKING:``, and
``importlib.import_module`` of a constant name (or of an f-string: every module its constant prefix names).
Relative imports are resolved; ``from pkg import name`` is an edge to ``pkg.name`` when that is a module,
else to ``pkg`` (a name its ``__init__`` defines). The packages a dotted import passes through are not
edges: Python runs their ``__init__`` first, and a package's ``__init__`` that re-exports its modules is
no cycle. Where there is a cycle, move the shared piece down; a lazy import does not hide it here.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("lepton_edge", "firmware_bridge")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``name`` (at ``path``) imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in known else module)
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            targets.update(_dynamic_targets(node.args[0], known))
    return {t for t in targets if t in known and t != name}


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or \
        (isinstance(func, ast.Name) and func.id == "import_module")


def _dynamic_targets(arg: ast.expr, known: dict[str, Path]) -> set[str]:
    """``import_module("a.b")`` is ``a.b``; ``import_module(f"a.b.{name}")`` may be any module of ``a.b``."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value}
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = str(arg.values[0].value)
        return {m for m in known if m.startswith(prefix) and "." not in m[len(prefix):]}
    return set()


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(edges, WHITE)
    for start in sorted(edges):
        if colour[start] != WHITE:
            continue
        stack = [(start, iter(sorted(edges[start])))]
        colour[start] = GREY
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour[child] == GREY:
                    path = [n for n, _ in stack]
                    return [*path[path.index(child):], child]
                if colour[child] == WHITE:
                    colour[child] = GREY
                    stack.append((child, iter(sorted(edges[child]))))
                    break
            else:
                colour[node] = BLACK
                stack.pop()
    return None


def all_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group: cut an edge of each found cycle and look again."""
    edges = {k: set(v) for k, v in edges.items()}
    cycles = []
    while (cycle := find_cycle(edges)) is not None:
        cycles.append(cycle)
        edges[cycle[-2]].discard(cycle[-1])
    return cycles


def test_the_graph_sees_lazy_relative_and_type_checking_imports(tmp_path):
    known = {"p": tmp_path / "p" / "__init__.py", "p.a": tmp_path / "p" / "a.py", "p.b": tmp_path / "p" / "b.py",
             "p.c": tmp_path / "p" / "c.py"}
    (tmp_path / "p").mkdir()
    known["p.a"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import X\n"
                            "def f():\n    from . import c\n    import p\n")
    assert imports_of("p.a", known["p.a"], known) == {"p.b", "p.c", "p"}
    known["p.b"].write_text("import importlib\nfor n in ('a', 'c'):\n    importlib.import_module(f'p.{n}')\n")
    assert imports_of("p.b", known["p.b"], known) == {"p.a", "p.c"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    edges = graph()
    assert len(edges) > 100 and edges["lepton_edge.convert.pipeline"]
    cycles = all_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)
