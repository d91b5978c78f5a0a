"""Sharded, multi-process, resumable binarization and the memory-mapped training data.

Each sharded result is pinned to a simple reference: the per-line tokenizer, the one-seed permutation,
DistributedSampler + upstream's GroupedBatchSampler, and the in-memory dataset as it was before
(tests/reference_dataset.py).
"""

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import BatchSampler
from torch.utils.data.distributed import DistributedSampler
from transformers import BertTokenizerFast

import train
from conftest import ROOT, run_main
from grouped_batch_sampler import GroupedBatchSampler, create_lengths_groups, epoch_batches
from lm_seqs_dataset import LmSeqsDataset, SequenceSpec
from reference_dataset import InMemoryLmSeqsDataset
from scripts import binarized_data, token_counts
from train_helpers import read_metrics, sentences, with_args
from training import data_format


def dump_text(articles, repeat=1, extra=()):
    lines = [p for a in articles for p in a["text"].split("\n")] * repeat  # blank lines and headings too
    return "\n".join([*lines, *extra]) + "\n"


def binarize(folder, text, tokenizer_dir, *extra):
    folder.mkdir(parents=True, exist_ok=True)
    logging.getLogger("binarized_data").setLevel(logging.INFO)  # pytest keeps the root logger at WARNING
    dump = folder / "dump.txt"
    if not dump.exists():
        dump.write_text(text, encoding="utf-8")
    proc = run_main(binarized_data.main, "--file_path", dump, "--tokenizer_name", tokenizer_dir,
                    "--dump_file", folder / "binarized_text", *extra)
    assert proc.returncode == 0, proc.stderr
    return folder / f"binarized_text.{tokenizer_dir.name}.pickle", proc


def as_lists(data):
    return [s.tolist() for s in data.sequences()]


def test_sharded_equals_one_process_and_the_per_line_reference(tmp_path, articles, tokenizer_dir):
    text = dump_text(articles[:80])
    one, _ = binarize(tmp_path / "one", text, tokenizer_dir, "--num_proc", "1", "--seed", "3")
    many, proc = binarize(tmp_path / "many", text, tokenizer_dir, "--num_proc", "2", "--shard_mb", "0.004",
                          "--seed", "3")
    a, b = data_format.load_binarized(one), data_format.load_binarized(many)
    assert a.meta["shards"] == 1 and b.meta["shards"] > 5 and len(b.shards) == b.meta["shards"]
    assert as_lists(a) == as_lists(b)
    for key in ("lines", "blank_lines", "dropped_short", "n_sequences", "n_tokens", "max_id"):
        assert a.meta[key] == b.meta[key], key

    # The reference: each line on its own, the short ones dropped, then one permutation with the seed.
    tok = BertTokenizerFast.from_pretrained(tokenizer_dir)
    lines = [x.strip() for x in text.split("\n") if x.strip()]
    kept = [ids for ids in (tok.encode(f"[CLS] {x} [SEP]", add_special_tokens=False) for x in lines) if len(ids) >= 12]
    perm = np.random.default_rng(3).permutation(len(kept))
    assert as_lists(b) == [kept[i] for i in perm]

    counts = {}
    for name, path in (("one", one), ("many", many)):
        out = tmp_path / f"counts.{name}.pickle"
        assert run_main(token_counts.main, "--data_file", path, "--token_counts_dump", out,
                        "--vocab_size", len(tok)).returncode == 0
        counts[name] = data_format.load_token_counts(out)[0]
    assert np.array_equal(counts["one"], counts["many"])
    assert np.array_equal(counts["one"], np.bincount(np.concatenate([np.array(k) for k in kept]), minlength=len(tok)))


def test_valid_split_and_counts_match_across_shards(tmp_path, articles, tokenizer_dir):
    text = dump_text(articles[:80])
    runs = {}
    for name, extra in (("one", ("--num_proc", "1")), ("many", ("--num_proc", "2", "--shard_mb", "0.004"))):
        train, _ = binarize(tmp_path / name, text, tokenizer_dir, "--valid_size", "40", *extra)
        valid = str(train).replace(".pickle", ".valid.pickle")
        runs[name] = (data_format.load_binarized(train), data_format.load_binarized(valid))
    (t1, v1), (t2, v2) = runs["one"], runs["many"]
    head = v2.head(7)  # scripts/evaluate.py --max_sequences 7: the first 7 held-out sequences
    assert as_lists(head) == as_lists(v2)[:7] and head.n_tokens == sum(map(len, as_lists(v2)[:7]))
    assert len(v1) == len(v2) == 40 and as_lists(v1) == as_lists(v2) and as_lists(t1) == as_lists(t2)
    assert t2.meta["n_tokens"] + v2.meta["n_tokens"] == sum(len(s) for s in as_lists(t2) + as_lists(v2))
    # Token counts of the training part only (the held-out sequences share its shards).
    out = tmp_path / "counts.pickle"
    assert run_main(token_counts.main, "--data_file", tmp_path / "many" / "binarized_text.tiny-bert.pickle",
                    "--token_counts_dump", out, "--vocab_size", t1.meta["vocab_size"]).returncode == 0
    expected = np.bincount(np.concatenate(t1.sequences()), minlength=t1.meta["vocab_size"])
    assert np.array_equal(data_format.load_token_counts(out)[0], expected)


def test_machines_share_the_work_with_shard_i_of_n(tmp_path, articles, tokenizer_dir):
    text = dump_text(articles[:60])
    whole, _ = binarize(tmp_path / "whole", text, tokenizer_dir, "--shard_mb", "0.004")
    parts = tmp_path / "parts"
    out = parts / "binarized_text.tiny-bert.pickle"
    for i in (2, 0):
        _, proc = binarize(parts, text, tokenizer_dir, "--shard_mb", "0.004", "--shard", f"{i}/3")
        assert not out.exists() and "still to do" in proc.stderr
    _, proc = binarize(parts, text, tokenizer_dir, "--shard_mb", "0.004", "--shard", "1/3")
    assert out.exists()
    assert as_lists(data_format.load_binarized(whole)) == as_lists(data_format.load_binarized(out))


@pytest.mark.slow
def test_a_killed_binarization_resumes(tmp_path, articles, tokenizer_dir):
    text = dump_text(articles, repeat=6)  # ~150 shards of 4 KB: several seconds of work
    fresh, _ = binarize(tmp_path / "fresh", text, tokenizer_dir, "--shard_mb", "0.004", "--num_proc", "1")
    work = tmp_path / "killed"
    work.mkdir()
    (work / "dump.txt").write_text(text, encoding="utf-8")
    argv = [sys.executable, str(ROOT / "scripts/binarized_data.py"), "--file_path", str(work / "dump.txt"),
            "--tokenizer_name", str(tokenizer_dir), "--dump_file", str(work / "binarized_text"),
            "--shard_mb", "0.004", "--num_proc", "1"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = work / "binarized_text.tiny-bert.shards"
    deadline = time.time() + 60
    while len(list(shards.glob("*.json"))) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(shards.glob("*.json")))
    out = work / "binarized_text.tiny-bert.pickle"
    assert not out.exists() and done >= 5, "the run should have been killed halfway"
    n_shards = data_format.load_binarized(fresh).meta["shards"]
    assert done < n_shards

    _, proc = binarize(work, text, tokenizer_dir, "--shard_mb", "0.004", "--num_proc", "1")
    assert f"{n_shards} shards" in proc.stderr and f"holds {n_shards}, {done} already done" in proc.stderr
    assert as_lists(data_format.load_binarized(out)) == as_lists(data_format.load_binarized(fresh))
    assert not list(shards.glob(".*.tmp")), "a half-written shard of the killed run was left behind"


def test_changed_settings_redo_the_shards(tmp_path, articles, tokenizer_dir):
    text = dump_text(articles[:40])
    out, _ = binarize(tmp_path / "a", text, tokenizer_dir, "--shard_mb", "0.004", "--min_tokens", "12")
    _, proc = binarize(tmp_path / "a", text, tokenizer_dir, "--shard_mb", "0.004", "--min_tokens", "5")
    assert " 0 already done" in proc.stderr
    fresh, _ = binarize(tmp_path / "b", text, tokenizer_dir, "--shard_mb", "0.004", "--min_tokens", "5")
    assert as_lists(data_format.load_binarized(out)) == as_lists(data_format.load_binarized(fresh))
    # Only the seed changed: every shard is reused, only the order is drawn again.
    _, proc = binarize(tmp_path / "b", text, tokenizer_dir, "--shard_mb", "0.004", "--min_tokens", "5", "--seed", "9")
    n = data_format.load_binarized(fresh).meta["shards"]
    assert f"holds {n}, {n} already done" in proc.stderr


@pytest.mark.parametrize("flags,needle", [
    (("--num_proc", "0"), "--num_proc: must be positive"),
    (("--shard_mb", "-1"), "--shard_mb: must be positive"),
    (("--shard_mb", "nan"), "--shard_mb: must be positive and finite, got nan"),
    (("--shard_mb", "inf"), "--shard_mb: must be positive and finite, got inf"),
    (("--shard", "3/2"), "--shard must be i/n"),
    (("--shard", "half"), "--shard must be i/n"),
])
def test_bad_flags_fail_before_any_work(tmp_path, tokenizer_dir, flags, needle):
    dump = tmp_path / "dump.txt"
    dump.write_text("the river city is on the river in the city of the river\n")
    proc = run_main(binarized_data.main, "--file_path", dump, "--tokenizer_name", tokenizer_dir,
                    "--dump_file", tmp_path / "out", *flags)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("out*"))


def test_a_manifest_without_its_arrays_is_a_clear_error(tmp_path, articles, tokenizer_dir):
    out, _ = binarize(tmp_path, dump_text(articles[:20]), tokenizer_dir)
    shards = data_format.shards_folder(out)
    (shards / "order.npy").unlink()
    with pytest.raises(data_format.InputError, match="order.npy, which is missing: keep the .pickle beside"):
        data_format.load_binarized(out)
    np.save(shards / "order.npy", np.arange(3))
    with pytest.raises(data_format.InputError, match="do not match"):
        data_format.load_binarized(out)


# -- the dataset and the data order -------------------------------------------------------------------------


@pytest.mark.parametrize("n,world_size,batch_size", [(1, 4, 3), (3, 4, 2), (101, 1, 8), (1000, 3, 7), (1000, 2, 32)])
def test_epoch_batches_are_distributed_sampler_then_grouped_batch_sampler(n, world_size, batch_size):
    lengths = np.random.default_rng(n).integers(12, 130, size=n)
    for rank in range(world_size):
        for group_by_size in (True, False):
            sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=5)
            sampler.set_epoch(2)
            if group_by_size:
                reference = GroupedBatchSampler(sampler, create_lengths_groups(lengths, k=128, log=False), batch_size)
            else:
                reference = BatchSampler(sampler, batch_size, drop_last=False)
            groups = create_lengths_groups(lengths, k=128, log=False)
            ours = epoch_batches(groups, batch_size, 2, 5, rank, world_size, group_by_size)
            assert [list(map(int, b)) for b in reference] == list(ours)
            assert len(ours) == len(reference) and list(ours[2:]) == list(ours)[2:]


def special_ids(tokenizer_dir):
    return data_format.special_token_ids(BertTokenizerFast.from_pretrained(tokenizer_dir))


def test_mapped_dataset_gives_todays_items_and_batches(tmp_path, articles, tokenizer_dir):
    long = " ".join(a["text"].replace("\n", " ") for a in articles[:2])  # hundreds of tokens: split
    unknown = "zqx vwy qqj xxz jjv wqz the"  # words out of the tiny vocab: mostly [UNK]
    text = dump_text(articles[:60], extra=[long, unknown, unknown + " river", long])
    out, _ = binarize(tmp_path, text, tokenizer_dir, "--shard_mb", "0.004", "--valid_size", "10", "--min_tokens", "5")
    mapped = data_format.load_binarized(out)
    assert isinstance(mapped.shards[0], np.memmap) and len(mapped.shards) > 5
    in_memory = data_format.Binarized.from_sequences(mapped.sequences())
    params = SequenceSpec(special_ids(tokenizer_dir), max_len=64, min_len=12)
    ours, ref = LmSeqsDataset(params, mapped), InMemoryLmSeqsDataset(params, in_memory)
    assert len(ours) == len(ref)
    for i in range(len(ref)):
        a, b = ours[i], ref[i]
        assert a[1] == b[1] and np.array_equal(a[0], b[0]), i
    assert np.array_equal(ours.lengths, ref.lengths) and ours.n_tokens == int(ref.lengths.sum())
    assert np.array_equal(ours.length_groups(128), create_lengths_groups(ref.lengths, k=128, log=False))
    assert len(ours.chunk_offsets) > 3, "the long lines should have been split"
    assert len(ours._skip) > 0, "short and unknown sequences should have been dropped"
    for rank in (0, 1):
        mine = epoch_batches(ours.groups, 8, 1, 7, rank, 2)  # the dataset's own groups, for its max_len 64
        theirs = epoch_batches(create_lengths_groups(ref.lengths, k=64, log=False), 8, 1, 7, rank, 2)
        assert list(mine) == list(theirs)
        for batch in list(mine)[:5]:
            x, y = ours.batch_sequences([ours[i] for i in batch]), ours.batch_sequences([ref[i] for i in batch])
            assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


def test_the_single_file_format_still_loads_and_gives_the_same_dataset(tmp_path, articles, tokenizer_dir):
    out, _ = binarize(tmp_path, dump_text(articles[:30]), tokenizer_dir, "--shard_mb", "0.004")
    mapped = data_format.load_binarized(out)
    old = tmp_path / "old.pickle"
    flat = np.concatenate(mapped.sequences())
    data_format.save_binarized(old, flat, data_format.offsets_from_lengths(mapped.lengths), mapped.meta)
    loaded = data_format.load_binarized(old)
    assert loaded.meta["n_sequences"] == len(mapped) and as_lists(loaded) == as_lists(mapped)
    params = SequenceSpec(special_ids(tokenizer_dir), max_len=64)
    a, b = LmSeqsDataset(params, loaded), LmSeqsDataset(params, mapped)
    items = [[ds[i][0].tolist() for i in range(len(ds))] for ds in (a, b)]
    assert items[0] == items[1]


@pytest.mark.slow
def test_training_on_mapped_shards_equals_training_on_the_single_file(tmp_path, base_argv, articles, tokenizer_dir):
    """The same sequences in both formats: identical losses at every step and identical weights."""

    text = "\n".join(sentences(articles)) + "\n"
    mapped_file, _ = binarize(tmp_path / "mapped", text, tokenizer_dir, "--shard_mb", "0.01", "--num_proc", "2")
    mapped = data_format.load_binarized(mapped_file)
    assert len(mapped.shards) > 3
    single = tmp_path / "single.pickle"
    offsets = data_format.offsets_from_lengths(mapped.lengths)
    data_format.save_binarized(single, np.concatenate(mapped.sequences()), offsets, mapped.meta)
    argv = with_args(base_argv, log_interval=1)
    train.main(with_args(argv, data_file=mapped_file, dump_path=tmp_path / "run_mapped"))
    train.main(with_args(argv, data_file=single, dump_path=tmp_path / "run_single"))
    a, b = read_metrics(tmp_path / "run_mapped"), read_metrics(tmp_path / "run_single")
    assert sorted(a) == sorted(b) and len(a) > 20
    assert all(a[it]["loss"] == b[it]["loss"] for it in a)
    wa, wb = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("run_mapped", "run_single"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
