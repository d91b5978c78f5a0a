"""The code passes ruff (ruff.toml: pyflakes and pycodestyle at 120 columns), and every module is importable
the one way the project imports them (pyproject.toml, installed by requirements.txt)."""

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_every_module_is_installed_and_no_file_edits_sys_path():
    listed = re.search(r"py-modules = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S).group(1)
    modules = sorted(p.stem for p in ROOT.glob("*.py"))
    # a new module: list it in pyproject.toml's py-modules, then `pip install -e .` again
    assert sorted(re.findall(r'"(\w+)"', listed)) == modules
    for name in ["train", "scripts.binarized_data", "scripts.extract.distilbert", "benchmarks.bench_train"]:
        spec = importlib.util.find_spec(name)
        assert spec is not None and ROOT in Path(spec.origin).parents, name
    code = [p for d in ("", "scripts", "scripts/extract", "benchmarks", "tests") for p in (ROOT / d).glob("*.py")]
    assert [p.name for p in code if "sys.path.insert" in p.read_text() and p.name != "test_lint.py"] == []


def test_no_build_output_is_tracked():
    """`pip install -e .` rewrites *.egg-info/ on every install: it belongs in .gitignore, not in git."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert not [p for p in tracked if ".egg-info/" in p or "__pycache__/" in p]
    ignored = subprocess.run(["git", "check-ignore", "-q", "distilbert_small.egg-info/PKG-INFO"], cwd=ROOT)
    assert ignored.returncode == 0


TIMING = re.compile(r"second|time|latency|elapsed|duration|speed|per_s\b|_ms\b|throughput", re.I)


def timing_comparisons(source):
    """Assertions in `source` that compare a timing (a name that says so, or a variable a timing call returned)
    with anything but 0: "line: left ? right"."""
    found = []
    for func in (n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.Module))):
        calls = [n for n in ast.walk(func) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)]
        timed = {t.id for n in calls if TIMING.search(ast.unparse(n.value.func)) for t in n.targets
                 if isinstance(t, ast.Name)}
        says_time = re.compile("|".join([TIMING.pattern, *(rf"\b{name}\b" for name in timed)]), re.I)
        for node in (n for n in ast.walk(func) if isinstance(n, ast.Assert)):
            for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
                parts = (cmp.left, *cmp.comparators)
                if not any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in cmp.ops) or any(
                    isinstance(x, ast.Set) for x in parts  # a subset of names, not a comparison of numbers
                ):
                    continue
                sides = [ast.unparse(x) for x in parts]
                if any(says_time.search(s) for s in sides) and sides[1:] != ["0"]:
                    found.append(f"{cmp.lineno}: {' ? '.join(sides)}")
    return sorted(set(found))


def test_no_test_compares_a_timing():
    """A timing depends on the CPU and its load, so no assertion compares one with another or with a number: the
    one pattern allowed is that a measured time or rate is positive (`> 0`) and finite (docs/tests.md)."""
    found = [f"{p.name}:{line}" for p in sorted((ROOT / "tests").glob("*.py")) for line in timing_comparisons(
        p.read_text())]
    assert found == []
    # the check itself, on the comparisons it was written against and on the allowed pattern
    caught = timing_comparisons("""def test_x():
    t = demo_plan.time_steps(n_steps=1)
    assert 0 < t["mlm_only"] < t["distilled"]
    assert rows["KD"]["epoch_seconds"] < 2 * rows["plain"]["epoch_seconds"]
    assert t["teacher"] > 0 and rows["KD"]["logits_seconds"] > 0
    assert {"lr", "tokens_per_s"} <= set(last)""")
    assert [line.split(":")[0] for line in caught] == ["3", "4"]
