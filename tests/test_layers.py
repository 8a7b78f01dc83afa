"""Data flows one way: each module imports only modules below it (no cycles)."""

import ast

from helpers import REPO

# Bottom to top, as README's "How it works" draws them.
ORDER = ["__init__", "errors", "snapshot", "kernel",
         "ioports", "mtree", "mmiomap", "qemucmd", "names", "monitor", "devices", "naming",   # naming
         "report",                                                                 # rows
         "formats", "printer", "webconfig", "httpserver", "exporter",              # sinks
         "perfscript", "results", "compare",          # saved results (--from-perf, --compare)
         "session",                                                                # the run
         "args", "serve", "live", "cli", "__main__",                               # front ends
         "guest", "perfrecord"]                       # the test guest, the perf helper


def imported(path):
    """Names of piobpf modules that `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("piobpf"):
            found.add((node.module.split(".") + ["__init__"])[1])
    return found


def test_every_module_is_placed():
    assert {p.stem for p in (REPO / "piobpf").glob("*.py")} == set(ORDER)


def test_imports_go_down_only():
    upward = []
    for path in (REPO / "piobpf").glob("*.py"):
        me = ORDER.index(path.stem)
        for name in imported(path):
            if name != "__version__" and ORDER.index(name) >= me:
                upward.append(f"{path.stem} imports {name}")
    assert upward == []
