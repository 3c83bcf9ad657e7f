"""The import graph of daamlib, read from the source with ``ast``: no cycles, function-level imports included, and
a core that never reaches the studies or ShapeWorld (the runtime check of the latter is in test_layout.py).

An edge A → B means running A's code imports B: ``from .b import x``, ``from . import b``, ``from ..b import x``,
``import daamlib.b`` anywhere in A (inside functions too; ``if TYPE_CHECKING:`` blocks are skipped, they never
run). Importing ``daamlib.p.m`` also runs the package ``daamlib.p``'s ``__init__`` unless A is inside ``p``
already, so that is an edge too; the top package ``daamlib`` is always initialised first and gets no implicit edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx  # a dependency of torch

PACKAGE = Path(__file__).resolve().parents[1] / "daamlib"
OUTSIDE_CORE = ("daamlib.studies", "daamlib.shapeworld")


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under the package folder ``root`` (``__init__`` → the package)."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = (root.name, *f.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _type_checking(node: ast.AST) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return getattr(t, "id", None) == "TYPE_CHECKING" or getattr(t, "attr", None) == "TYPE_CHECKING"


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if _type_checking(node) and child in node.body:
                continue
            stack.append(child)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def import_graph(root: Path = PACKAGE) -> nx.DiGraph:
    """Modules of the package as nodes; an edge per import between them, with ``lines`` (where it is imported)."""
    files = module_names(root)
    g = nx.DiGraph()
    g.add_nodes_from(files)
    for name, f in files.items():
        is_package = f.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]  # the package relative imports start from
        targets = []  # (module, line)
        for node in _imports(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.Import):
                targets += [(a.name, node.lineno) for a in node.names]
                continue
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:  # `from .p import m` imports the submodule m when there is one
                sub = f"{base}.{a.name}"
                targets.append((sub if sub in files else base, node.lineno))
        for target, line in targets:
            if not _within(target, root.name):
                continue
            while target not in files and "." in target:  # `import daamlib.x.attr`-like names: the module itself
                target = target.rpartition(".")[0]
            # running `daamlib.p.m` first runs daamlib.p's __init__, unless this module is inside p already
            parts = target.split(".")
            chain = [".".join(parts[:i]) for i in range(2, len(parts))] + [target]
            for t in chain:
                if t not in files or t == name or (t != target and _within(name, t)):
                    continue
                if g.has_edge(name, t):
                    g.edges[name, t]["lines"].append(line)
                else:
                    g.add_edge(name, t, lines=[line])
    return g


def describe_cycles(g: nx.DiGraph) -> list[str]:
    """Every elementary cycle, each as ``a:12 → b:40 → a`` (the line of a that imports b, and so on)."""
    out = []
    for cycle in sorted(nx.simple_cycles(g), key=lambda c: (len(c), sorted(c))):
        i = cycle.index(min(cycle))
        cycle = cycle[i:] + cycle[:i]
        hops = [f"{a}:{','.join(map(str, sorted(set(g.edges[a, b]['lines']))))}"
                for a, b in zip(cycle, cycle[1:] + cycle[:1])]
        out.append(" → ".join(hops + [cycle[0]]))
    return out


def test_no_import_cycles():
    cycles = describe_cycles(import_graph())
    assert not cycles, (f"{len(cycles)} import cycle(s) in daamlib (module:line that imports the next):\n  "
                        + "\n  ".join(cycles))


def test_the_core_never_reaches_the_studies_or_shapeworld():
    """No module outside daamlib.studies / daamlib.shapeworld imports them, directly or through another module."""
    g = import_graph()
    core = [m for m in g if not any(_within(m, p) for p in OUTSIDE_CORE)]
    bad = {m: sorted(t for t in nx.descendants(g, m) if any(_within(t, p) for p in OUTSIDE_CORE)) for m in core}
    bad = {m: ts for m, ts in bad.items() if ts}
    assert not bad, "the core imports the studies or ShapeWorld: " + "; ".join(
        f"{m} → {', '.join(ts)} (path: {' → '.join(nx.shortest_path(g, m, ts[0]))})" for m, ts in bad.items())


def test_the_graph_sees_function_level_relative_and_package_imports(tmp_path):
    """The reader finds what the two tests above rely on: on a made-up package with one cycle per kind of import."""
    pkg = tmp_path / "daamlib"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import f\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import x\ndef f():\n    from . import b\n",
        "b.py": "from .a import f\n",                        # a ⇄ b: only through a function-level import in a
        "c.py": "import daamlib.sub.d\n",                    # c → sub (its __init__) and c → sub.d
        "sub/__init__.py": "",
        "sub/d.py": "def g():\n    from ..c import y\n",     # sub.d → c: a cycle through `..`
        "sub/e.py": "from . import d\nfrom daamlib.studies.s import z\n",  # inside sub: no edge to sub's __init__
        "studies/__init__.py": "", "studies/s.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    g = import_graph(pkg)
    assert set(g.edges) == {("daamlib", "daamlib.a"), ("daamlib.a", "daamlib.b"), ("daamlib.b", "daamlib.a"),
                            ("daamlib.c", "daamlib.sub"), ("daamlib.c", "daamlib.sub.d"),
                            ("daamlib.sub.d", "daamlib.c"), ("daamlib.sub.e", "daamlib.sub.d"),
                            ("daamlib.sub.e", "daamlib.studies"), ("daamlib.sub.e", "daamlib.studies.s")}
    assert describe_cycles(g) == ["daamlib.a:5 → daamlib.b:1 → daamlib.a", "daamlib.c:1 → daamlib.sub.d:2 → daamlib.c"]
