"""scripts/binarized_data.py against a per-line reference, its cuts, its file format and its errors."""

import collections
import pickle

import numpy as np
import pytest
from transformers import BertTokenizerFast, GPT2TokenizerFast, RobertaTokenizerFast

from conftest import run_main, run_script, write_bert_vocab
from core.errors import InputError
from scripts import binarized_data
from training.data_format import load_binarized

SCRIPT = "scripts/binarized_data.py"


def binarize(tmp_path, text, tokenizer_dir, *extra, tokenizer_type="bert", cli=False):
    """The script on `text`, in this process (run_main), or as a user runs it (cli=True)."""
    dump = tmp_path / "dump.txt"
    dump.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    args = ("--file_path", dump, "--tokenizer_type", tokenizer_type, "--tokenizer_name", tokenizer_dir,
            "--dump_file", tmp_path / "binarized_text", *extra)
    proc = run_script(SCRIPT, *args) if cli else run_main(binarized_data.main, *args)
    return proc, tmp_path / f"binarized_text.{tokenizer_dir.name}.pickle"


def reference_ids(tokenizer, lines, bos, sep):
    """Upstream's per-line encoding."""
    return [tokenizer.encode(f"{bos} {line.strip()} {sep}", add_special_tokens=False) for line in lines]


def as_multiset(seqs):
    return collections.Counter(tuple(int(i) for i in s) for s in seqs)


def test_ids_equal_per_line_reference(tmp_path, articles, tokenizer_dir):
    lines = [p for a in articles[:60] for p in a["text"].split("\n")]  # includes blank lines and headings
    proc, out = binarize(tmp_path, "\n".join(lines) + "\n", tokenizer_dir, cli=True)
    assert proc.returncode == 0, proc.stderr
    data = load_binarized(out)

    tok = BertTokenizerFast.from_pretrained(tokenizer_dir)
    expected = [s for s in reference_ids(tok, [x for x in lines if x.strip()], "[CLS]", "[SEP]") if len(s) >= 12]
    assert as_multiset(data.sequences()) == as_multiset(expected)
    assert data.token_ids.dtype == np.uint16
    meta = data.meta
    assert meta["tokenizer_name"] == str(tokenizer_dir) and meta["vocab_size"] == len(tok)
    assert meta["special_token_ids"]["cls_token"] == tok.cls_token_id
    assert meta["special_token_ids"]["mask_token"] == tok.mask_token_id
    assert meta["n_sequences"] == len(expected) and meta["n_tokens"] == sum(map(len, expected))
    assert meta["blank_lines"] == sum(1 for x in lines if not x.strip())
    assert meta["dropped_short"] == sum(1 for x in lines if x.strip()) - len(expected) > 0
    assert "dropped" in proc.stderr  # the user is told how many were dropped


def test_min_tokens_cut_is_exact(tmp_path, tokenizer_dir):
    # Every word is in the vocab, so a line of n words is n + 2 tokens with [CLS] and [SEP].
    eleven, twelve = " ".join(["the"] * 9), " ".join(["the"] * 10)
    proc, out = binarize(tmp_path, f"{eleven}\n{twelve}\n\n{twelve}\n", tokenizer_dir)
    assert proc.returncode == 0, proc.stderr
    data = load_binarized(out)
    assert list(data.lengths) == [12, 12]
    assert data.meta["dropped_short"] == 1

    proc, out = binarize(tmp_path, f"{eleven}\n{twelve}\n", tokenizer_dir, "--min_tokens", "11")
    assert sorted(load_binarized(out).lengths) == [11, 12]


def test_ids_above_uint16_survive(tmp_path):
    words = [f"w{i}" for i in range(70_000)]
    tok_dir = write_bert_vocab(tmp_path / "big-vocab", words)
    line = " ".join(["w69999", "w65536", "w3"] * 4)
    proc, out = binarize(tmp_path, line + "\n", tok_dir)
    assert proc.returncode == 0, proc.stderr
    data = load_binarized(out)
    tok = BertTokenizerFast.from_pretrained(tok_dir)
    assert data.token_ids.dtype == np.int32
    assert data[0].tolist() == reference_ids(tok, [line], "[CLS]", "[SEP]")[0]
    assert data.token_ids.max() > 65_535


def test_long_lines_are_kept_whole(tmp_path, tokenizer_dir):
    long_line = " ".join(["the river"] * 3000)  # far beyond any model_max_length
    proc, out = binarize(tmp_path, long_line + "\n", tokenizer_dir)
    assert proc.returncode == 0, proc.stderr
    assert load_binarized(out).lengths.tolist() == [6002]


def test_shuffle_is_seeded(tmp_path, articles, tokenizer_dir):
    text = "\n".join(p for a in articles[:40] for p in a["text"].split("\n") if p) + "\n"
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        folder = tmp_path / name
        folder.mkdir()
        proc, out = binarize(folder, text, tokenizer_dir, "--seed", seed)
        assert proc.returncode == 0, proc.stderr
        runs[name] = load_binarized(out)
    order = {name: [tuple(s) for s in data.sequences()] for name, data in runs.items()}
    assert order["a"] == order["b"]
    assert order["a"] != order["c"]
    assert as_multiset(runs["a"].sequences()) == as_multiset(runs["c"].sequences())


@pytest.mark.parametrize("tokenizer_type,cls,bos,sep", [
    ("gpt2", GPT2TokenizerFast, "<|endoftext|>", "<|endoftext|>"),
    ("roberta", RobertaTokenizerFast, "<s>", "</s>"),
])
def test_byte_level_tokenizers_match_reference(tmp_path, articles, tokenizer_type, cls, bos, sep):
    from tokenizers import ByteLevelBPETokenizer

    texts = [a["text"] for a in articles[:50]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, show_progress=False,
                            special_tokens=["<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>", "<mask>"])
    tok_dir = tmp_path / f"{tokenizer_type}-bpe"
    tok_dir.mkdir()
    bpe.save_model(str(tok_dir))
    lines = [s for t in texts[:20] for s in t.split("\n") if s]
    proc, out = binarize(tmp_path, "\n".join(lines) + "\n", tok_dir, tokenizer_type=tokenizer_type)
    assert proc.returncode == 0, proc.stderr
    expected = [s for s in reference_ids(cls.from_pretrained(tok_dir), lines, bos, sep) if len(s) >= 12]
    assert as_multiset(load_binarized(out).sequences()) == as_multiset(expected)


@pytest.mark.parametrize("case,needle", [
    ("missing", "does not exist"),
    ("missing_and_unknown_tokenizer", "dump.txt does not exist"),  # the file first: a hub may keep us waiting
    ("empty", "is empty"),
    ("latin1", "line 2 is not valid UTF-8"),
    ("bad_tokenizer", "cannot load tokenizer"),
    ("bad_type", "unknown --tokenizer_type"),
    ("all_short", "at least 12 tokens"),
])
def test_bad_input_fails_cleanly(tmp_path, tokenizer_dir, case, needle):
    dump = tmp_path / "dump.txt"
    tok, tok_type = str(tokenizer_dir), "bert"
    body = "the river city is on the river in the city of the river\n"
    if case == "empty":
        dump.write_bytes(b"")
    elif case == "latin1":
        dump.write_bytes(body.encode() + "caf\u00e9 on the river\n".encode("latin-1"))
    elif not case.startswith("missing"):
        dump.write_text(body if case != "all_short" else "the river\n\n")
    if case in ("bad_tokenizer", "missing_and_unknown_tokenizer"):
        tok = "bert-base-uncasde"
    if case == "bad_type":
        tok_type = "xlnet"
    proc = run_main(binarized_data.main, "--file_path", dump, "--tokenizer_type", tok_type, "--tokenizer_name", tok,
                    "--dump_file", tmp_path / "out")
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("out*")), "no output (not even a temporary file) after an error"


def test_upstream_list_format_is_read(tmp_path):
    seqs = [np.array([101, 5, 6, 102], dtype=np.uint16), np.array([101, 7, 102], dtype=np.uint16)]
    path = tmp_path / "upstream.pickle"
    path.write_bytes(pickle.dumps(seqs, protocol=pickle.HIGHEST_PROTOCOL))
    data = load_binarized(path)
    assert [s.tolist() for s in data.sequences()] == [s.tolist() for s in seqs]


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [Exploit(), {"kind": "binarized_text", "x": collections.OrderedDict()}])
def test_pickles_with_code_are_rejected(tmp_path, payload):
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(InputError, match="not a plain data file"):
        load_binarized(path)


def test_truncated_file_is_rejected(tmp_path, articles, tokenizer_dir):
    text = "\n".join(p for a in articles[:20] for p in a["text"].split("\n") if p) + "\n"
    proc, out = binarize(tmp_path, text, tokenizer_dir)
    assert proc.returncode == 0, proc.stderr
    cut = tmp_path / "cut.pickle"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated or damaged"):
        load_binarized(cut)


def test_valid_split_holds_out_random_sequences(tmp_path, articles, tokenizer_dir):
    text = "\n".join(p for a in articles[:60] for p in a["text"].split("\n") if p) + "\n"
    whole = tmp_path / "whole"
    whole.mkdir()
    proc, out = binarize(whole, text, tokenizer_dir)
    assert proc.returncode == 0, proc.stderr
    all_seqs = load_binarized(out)

    proc, out = binarize(tmp_path, text, tokenizer_dir, "--valid_size", 25)
    assert proc.returncode == 0, proc.stderr
    train, valid = load_binarized(out), load_binarized(tmp_path / f"binarized_text.{tokenizer_dir.name}.valid.pickle")
    assert len(valid) == 25 and len(train) == len(all_seqs) - 25
    assert (valid.meta["split"], train.meta["split"]) == ("valid", "train")
    assert as_multiset(train.sequences()) + as_multiset(valid.sequences()) == as_multiset(all_seqs.sequences())

    proc, _ = binarize(tmp_path / "whole", text, tokenizer_dir, "--valid_size", len(all_seqs))
    assert proc.returncode == 2 and "leaves no training data" in proc.stderr
