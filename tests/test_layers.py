"""Data flows one way, and the folders say how: each layer (a folder of
piobpf/) imports only the layers below it, and modules of one layer only
each other without a cycle."""

import ast

from helpers import REPO

PACKAGE = REPO / "piobpf"
# Bottom to top, as docs/design.md draws them; layers on one line are
# side by side (neither imports the other).
LAYERS = [{"core"}, {"kernel", "offline"}, {"naming"}, {"rows"}, {"sinks"}, {"run"}, {"cli"}]
RANK = {layer: i for i, group in enumerate(LAYERS) for layer in group}


def modules():
    """{dotted name below piobpf: path} of every module of the package."""
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
            for p in PACKAGE.rglob("*.py")}


def imported(name, path):
    """Dotted names below piobpf of the modules (or packages) `path` imports."""
    package = name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)]
        elif (node.module or "").split(".")[0] == "piobpf":
            base = []
        else:
            continue
        mod = [m for m in (node.module or "").split(".") if m]
        if not node.level:
            mod = mod[1:]
        for alias in node.names:
            full = ".".join(base + mod + [alias.name])
            found.add(full if full in modules() or full + ".__init__" in modules()
                      else ".".join(base + mod))
    return {f for f in found if f}


def layer(name):
    """The layer (folder) of a dotted name; None for the package's own modules."""
    first = name.split(".")[0]
    return first if first in RANK or "." in name else None


def test_every_module_is_in_a_layer():
    loose = {n for n in modules() if layer(n) is None} - {"__init__", "__main__"}
    assert loose == set()
    assert {layer(n) for n in modules()} - {None} == set(RANK)


def test_layers_import_only_layers_below():
    upward = []
    for name, path in modules().items():
        mine = layer(name)
        for other in imported(name, path):
            theirs = layer(other)
            if mine and theirs and theirs != mine and RANK[theirs] >= RANK[mine]:
                upward.append(f"{name} imports {other}")
            if mine and theirs is None and other not in ("", "__init__"):
                upward.append(f"{name} imports {other}")
    assert upward == []


def test_no_cycle_inside_a_layer():
    graph = {n: {o for o in imported(n, p) if layer(o) == layer(n) and o != n}
             for n, p in modules().items()}
    done, path = set(), []

    def visit(n):
        assert n not in path, " -> ".join(path + [n])
        if n in done:
            return
        path.append(n)
        for o in graph.get(n, ()):
            visit(o if o in graph else o + ".__init__")
        path.pop()
        done.add(n)
    for n in graph:
        visit(n)


def test_runtime_imports_no_test_tool():
    for name, path in modules().items():
        assert "tools" not in {a.split(".")[0] for a in imported(name, path)}, name
