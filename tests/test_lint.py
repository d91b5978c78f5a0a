"""The code passes ruff (ruff.toml: pyflakes and pycodestyle at 120 columns), and every module is importable
the one way the project imports them (pyproject.toml, installed by requirements.txt)."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
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
