"""scripts/token_counts.py against a Counter reference, and its checks of the data and --vocab_size."""

import collections
import pickle

import numpy as np
import pytest

from conftest import run_main, run_script
from scripts import token_counts
from training.data_format import load_token_counts, offsets_from_lengths, save_binarized

SCRIPT = "scripts/token_counts.py"


def make_data(path, seqs, meta):
    lengths = np.array([len(s) for s in seqs])
    save_binarized(path, np.concatenate(seqs), offsets_from_lengths(lengths), meta)
    return path


@pytest.fixture
def seqs():
    rng = np.random.default_rng(3)
    # Zipf-like ids, as in text: a few frequent ids, a long tail, some ids never seen.
    return [np.minimum(rng.zipf(1.3, size=n), 999).astype(np.uint16) for n in rng.integers(12, 60, size=300)]


def counter_reference(seqs, vocab_size):
    counter = collections.Counter()
    for s in seqs:
        counter.update(s.tolist())
    counts = [0] * vocab_size
    for token, n in counter.items():
        counts[token] = n
    return counts


def test_counts_equal_counter_reference(tmp_path, seqs):
    data = make_data(tmp_path / "data.pickle", seqs, {"vocab_size": 1000, "tokenizer_name": "tiny"})
    out = tmp_path / "counts.pickle"
    proc = run_script(SCRIPT, "--data_file", data, "--token_counts_dump", out, "--vocab_size", 1000)
    assert proc.returncode == 0, proc.stderr
    counts, meta = load_token_counts(out)
    assert counts.dtype == np.int64 and counts.tolist() == counter_reference(seqs, 1000)
    assert meta["vocab_size"] == 1000 and meta["tokenizer_name"] == "tiny"
    assert (counts == 0).any()  # unseen ids get an explicit zero


def test_blocked_count_equals_bincount(seqs):
    ids = np.concatenate(seqs)
    assert np.array_equal(token_counts.count_tokens(ids, 1000, block=7), np.bincount(ids, minlength=1000))


def test_reads_upstream_formats(tmp_path, seqs):
    data = tmp_path / "upstream.pickle"
    data.write_bytes(pickle.dumps(seqs))  # upstream's list of arrays, no metadata
    out = tmp_path / "counts.pickle"
    proc = run_main(token_counts.main, "--data_file", data, "--token_counts_dump", out, "--vocab_size", 1000)
    assert proc.returncode == 0, proc.stderr
    assert load_token_counts(out)[0].tolist() == counter_reference(seqs, 1000)

    upstream_counts = tmp_path / "upstream_counts.pickle"
    upstream_counts.write_bytes(pickle.dumps(counter_reference(seqs, 1000)))
    assert load_token_counts(upstream_counts)[0].tolist() == counter_reference(seqs, 1000)


@pytest.mark.parametrize("case,needle", [
    ("meta_mismatch", "does not match"),
    ("id_too_large", "outside --vocab_size"),
    ("missing", "does not exist"),
    ("truncated", "truncated or damaged"),
    ("foreign", "not a plain data file"),
    ("wrong_kind", "holds a str"),
])
def test_bad_input_fails_cleanly(tmp_path, seqs, case, needle):
    data = tmp_path / "data.pickle"
    vocab_size = 1000
    if case == "meta_mismatch":
        make_data(data, seqs, {"vocab_size": 1000, "tokenizer_name": "tiny"})
        vocab_size = 30522
    elif case == "id_too_large":
        data.write_bytes(pickle.dumps(seqs))  # no metadata: only the largest id can tell
        vocab_size = 500
    elif case == "truncated":
        make_data(data, seqs, {"vocab_size": 1000})
        data.write_bytes(data.read_bytes()[:-100])
    elif case == "foreign":
        data.write_bytes(pickle.dumps(collections.Counter([1, 2, 3])))
    elif case == "wrong_kind":
        data.write_bytes(pickle.dumps("not data"))
    out = tmp_path / "counts.pickle"
    proc = run_main(token_counts.main, "--data_file", data, "--token_counts_dump", out, "--vocab_size", vocab_size)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
