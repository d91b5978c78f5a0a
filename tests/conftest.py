"""Shared fixtures: everything is built offline, seeded, and small.

The model hub is unreachable in CI, so the tokenizer is a WordPiece vocab made from the synthetic
corpus's own words (the real bert-base-uncased vocab is not needed to test the mechanics).
"""

import collections
import contextlib
import inspect
import io
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Fail fast instead of retrying an unreachable hub (scripts run by run_script inherit this).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Task distillation keeps teacher logits on disk: in a folder of the test run's own, never the user's cache.
os.environ.setdefault("TEACHER_LOGITS_CACHE", tempfile.mkdtemp(prefix="teacher_logits."))
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread per worker (and per script it runs),
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # so two workers do not fight over 2 cores
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from core import precision
from scripts import make_synthetic_wiki
from train_helpers import tiny_run_files

ROOT = Path(__file__).resolve().parents[1]

# The fixtures more than one test module takes, by subject; the helpers they share are in the *_helpers.py modules.
# No test module imports another.
pytest_plugins = ["fixtures_glue", "fixtures_qa", "fixtures_train"]

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def pytest_collection_modifyitems(items):
    """The slow tests first, so that the workers of `-n auto` do not end with one long test each."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def run_script(script, *args, cwd=None, check=False):
    """Run a repo script the way a user does (`python scripts/x.py ...`); return the CompletedProcess."""
    cmd = [sys.executable, str(ROOT / script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_main(main, *args, check=False):
    """A script's main(argv) in this process, answered like run_script's CompletedProcess (exit status,
    stdout, stderr with the log lines): the same code path, without a new interpreter's ~3-5 s of imports."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    logging.getLogger().addHandler(handler)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        logging.getLogger().removeHandler(handler)
    if check and code != 0:
        raise AssertionError(f"{main.__module__}.main failed ({code}):\n{out.getvalue()}\n{err.getvalue()}")
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def input_error(main, argv):
    """Call a script's main(argv) on bad input (run_main): it must exit with status 2 and end stderr with one
    line `<script>: error: ...`, no traceback. Returns that line."""
    proc = run_main(main, *argv)
    err = proc.stderr.strip().splitlines()
    prog = Path(inspect.getfile(inspect.unwrap(main))).name
    assert proc.returncode == 2, (proc.returncode, err)
    assert err and err[-1].startswith(f"{prog}: error: "), err
    assert not any("Traceback" in line for line in err), err
    return err[-1]


def positive(x):
    """The one check a measured time or rate gets (docs/tests.md): a positive, finite float."""
    return isinstance(x, float) and math.isfinite(x) and x > 0


def write_bert_vocab(folder, words):
    """A BERT-style tokenizer folder (vocab.txt) that `BertTokenizer.from_pretrained(folder)` loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,;:()–-'\"$%"))
    vocab = SPECIALS + chars + ["##" + c for c in chars if c.isalnum()]
    vocab += [w for w in words if w not in set(vocab)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def articles():
    return list(make_synthetic_wiki.generate(200, seed=0))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, articles):
    """A lowercase WordPiece tokenizer folder named `tiny-bert`, holding the corpus's 300 commonest words."""
    counts = collections.Counter(w for a in articles for w in re.findall(r"[a-z]+", a["text"].lower()))
    words = [w for w, _ in counts.most_common(300)]
    return write_bert_vocab(tmp_path_factory.mktemp("tok") / "tiny-bert", words)


@pytest.fixture(autouse=True)
def single_thread(monkeypatch):
    """Tiny models gain nothing from a second thread and lose several-fold when another process holds a
    core (OpenMP threads spin on each other). One thread here and in the scripts the tests start."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


UNDECLARED_BF16 = "undeclared (a test that reaches the bf16 probe takes the cpu_bf16, bf16_fast or bf16_slow fixture)"


@pytest.fixture(autouse=True)
def bf16_probe_is_declared(request, monkeypatch):
    """No test depends on what this machine's bf16 probe says (it differs between CPUs, and under load between
    calls): a test that reaches it must say which kind of CPU it stands for (the fixtures below), else the
    probe's answer is an error naming them, in this process and in the scripts it starts. Only the probe's own
    tests (marked bf16_probe) measure."""
    precision.cpu_bf16.cache_clear()
    if request.node.get_closest_marker("bf16_probe") is None:
        monkeypatch.setenv(precision.PROBE_ENV, UNDECLARED_BF16)
    yield
    precision.cpu_bf16.cache_clear()


def _declare_bf16(monkeypatch, answer):
    monkeypatch.setenv(precision.PROBE_ENV, answer)
    precision.cpu_bf16.cache_clear()
    return answer == "fast"


@pytest.fixture(params=["fast", "slow"])
def cpu_bf16(request, monkeypatch):
    """Both kinds of CPU, one after the other, on any CPU: True where bf16 pays (--bf16 runs bf16), False where
    it does not (--bf16 runs fp32). Where bf16 is emulated the fast branch is slower, not different: the tests'
    models are tiny."""
    return _declare_bf16(monkeypatch, request.param)


@pytest.fixture
def bf16_fast(monkeypatch):
    """A CPU where bf16 pays (the probe answers fast)."""
    return _declare_bf16(monkeypatch, "fast")


@pytest.fixture
def bf16_slow(monkeypatch):
    """A CPU where bf16 does not pay (the probe answers slow): --bf16 runs fp32."""
    return _declare_bf16(monkeypatch, "slow")


@pytest.fixture(scope="module")
def run_files(tmp_path_factory, tokenizer_dir, articles):
    """(folder, train.py argv) of a tiny run, built once per test module: binarized data, token counts, a
    tiny teacher and a student config (train_helpers.tiny_run_files)."""

    folder = tmp_path_factory.mktemp("run_files")
    return folder, tiny_run_files(folder, tokenizer_dir, articles)


@pytest.fixture(scope="module")
def base_argv(run_files):
    """train.py's arguments for the tiny run of `run_files` (no --dump_path)."""
    return run_files[1]
