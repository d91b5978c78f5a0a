"""The README's first command, at a reduced size: every step runs and the files fit together."""

import os
import subprocess
import sys

from transformers import BertTokenizerFast

from conftest import ROOT
from data_io import load_binarized, load_token_counts


def test_demo_runs_the_data_pipeline(tmp_path):
    run = tmp_path / "demo_run"
    env = dict(os.environ, PYTHON=sys.executable, DEMO_ARTICLES="300")
    proc = subprocess.run(["bash", str(ROOT / "scripts/demo.sh"), str(run)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    lines = (run / "dump.txt").read_text(encoding="utf-8").splitlines()
    assert lines and all(len(line.split()) >= 3 for line in lines)
    tokenizer = BertTokenizerFast.from_pretrained(run / "wordpiece-uncased")
    data = load_binarized(run / "binarized_text.wordpiece-uncased.pickle")
    counts, _ = load_token_counts(run / "token_counts.wordpiece-uncased.pickle")
    assert data.meta["vocab_size"] == len(tokenizer) == len(counts)
    assert 0 < len(data) <= len(lines) and data.lengths.min() >= 12
    assert counts.sum() == data.token_ids.size
    assert counts[tokenizer.cls_token_id] == counts[tokenizer.sep_token_id] == len(data)
