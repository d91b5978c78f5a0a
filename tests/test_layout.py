"""The layout the README's map describes, checked on the code itself: imports point down (core/, utils.py,
training/ and tasks/, the root's upstream files, scripts/), no import cycle, no project module imported inside
a function, no library module importing a script, and no file longer than the limit."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ("distiller", "grouped_batch_sampler", "lm_seqs_dataset", "train")  # the root's files, utils.py aside
PACKAGES = ("core", "training", "tasks")
MAX_LINES = 450


def layer(module):
    """Lower layers are imported by higher ones, never the other way."""
    top = module.split(".")[0]
    return {"core": 0, "utils": 1, "training": 2, "tasks": 2, "scripts": 4, "benchmarks": 4}.get(
        top, 3 if top in UPSTREAM else None)


def python_files(*folders):
    files = [p for f in folders for p in (ROOT / f).rglob("*.py")] if folders else []
    return sorted(files)


def library_files():
    return [ROOT / f"{m}.py" for m in (*UPSTREAM, "utils")] + python_files(*PACKAGES)


def module_name(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def project_imports(path):
    """(module imported, line, at top level?) for every import of a project module in `path`."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [f"{node.module}.{a.name}" if node.module in PACKAGES + ("scripts",) else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            if layer(name) is not None:
                yield name, node.lineno, id(node) in top


def test_library_imports_point_down_and_never_at_a_script():
    wrong = []
    for path in library_files():
        me = layer(module_name(path))
        for name, line, _ in project_imports(path):
            if layer(name) > me:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_training_never_imports_the_task_side():
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in python_files("training")
             for name, line, _ in project_imports(p) if name.startswith("tasks")]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {}
    for path in library_files() + python_files("scripts"):
        me = module_name(path)
        graph[me] = {name for name, _, top in project_imports(path) if top}
    modules = set(graph)

    def resolve(name):  # "core.errors.InputError" -> "core.errors"; "scripts" -> "scripts"
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {r for n in names if (r := resolve(n)) and r != m} for m, names in graph.items()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in edges.get(m, ()):
            if state.get(n) == "open":
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(n):], n]))
            if n not in state:
                visit(n, [*stack, n])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_no_project_module_is_imported_inside_a_function():
    inner = [f"{p.relative_to(ROOT)}:{line} imports {name}"
             for p in library_files() + python_files("scripts", "benchmarks", "tests")
             for name, line, top in project_imports(p) if not top]
    assert not inner, "\n".join(inner)


def test_no_file_is_longer_than_the_limit():
    long = [f"{p.relative_to(ROOT)}: {n} lines"
            for p in library_files() + python_files("scripts", "benchmarks", "tests")
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)
