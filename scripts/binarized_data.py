"""Step 2: tokenize a text dump once, so training never re-tokenizes.

    python scripts/binarized_data.py --file_path data/dump.txt --tokenizer_type bert \
        --tokenizer_name bert-base-uncased --dump_file data/binarized_text

writes data/binarized_text.bert-base-uncased.pickle: every line of the dump as [CLS] ... [SEP] token ids
(upstream's special tokens per --tokenizer_type), keeping only sequences of at least --min_tokens tokens,
shuffled with --seed. The reference run kept 5,355,344 sequences (~200M tokens) of ~5M Wikipedia
sentences.

Built for dumps past one machine's memory (all of Wikipedia: ~150M lines):
- the dump is cut at line boundaries into shards of --shard_mb MB, tokenized by --num_proc processes;
- each shard is written as it finishes, to <dump_file>.<tokenizer>.shards/, so memory stays at a few
  shards whatever the dump's size, and a killed run resumes: finished shards are kept;
- --shard i/n tokenizes only part i of n, so n machines can share the work on one file system; the
  run that finds every shard done writes the .pickle;
- the shuffle is a permutation of sequence numbers (order.npy), not a copy of the tokens.
The .pickle is a small manifest naming those arrays (training/data_format.py, format 2); training maps them from
disk, so every rank on a node shares one copy. Keep the .pickle and its .shards folder together.

Compared with upstream's script, which reads the whole file with readlines() and keeps a Python list of
ints per line until the end: the input is streamed in 1,000-line chunks, each tokenized by the Rust
tokenizer (`encode_batch`), and ids go straight into compact uint16/int32 arrays.
benchmarks/bench_binarize.py measures both side by side.
"""

import argparse
import contextlib
import errno
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core import loading
from core.errors import InputError, reports_errors
from core.files import check_writable, remove_stale_tmp
from training.data_format import (
    ids_dtype,
    save_array,
    save_array_blocks,
    save_manifest,
    save_order_stamp,
    shards_folder,
    special_token_ids,
    vocab_digest,
)

logger = logging.getLogger("binarized_data")

# bos / sep wrapped around each line, as upstream does it: attribute names on the tokenizer.
SPECIAL_TOKENS = {"bert": ("cls_token", "sep_token"), "roberta": ("cls_token", "sep_token"),
                  "gpt2": ("bos_token", "eos_token")}
CHUNK_LINES = 1_000  # lines per encode_batch call: enough to keep a core busy, few enough to bound memory
SHARD_MB = 64  # at most ~500k Wikipedia lines a shard: a worker holds ~40 MB of ids; all of Wikipedia, ~300 shards


def load_tokenizer(tokenizer_type, tokenizer_name):
    if tokenizer_type not in SPECIAL_TOKENS:
        raise InputError(f"unknown --tokenizer_type {tokenizer_type!r}: use one of {', '.join(SPECIAL_TOKENS)}")
    # The *Fast classes are the Rust tokenizers under both transformers 4 and 5 (in 5, BertTokenizer is too).
    import transformers

    cls = {"bert": transformers.BertTokenizerFast, "roberta": transformers.RobertaTokenizerFast,
           "gpt2": transformers.GPT2TokenizerFast}[tokenizer_type]
    return loading.load_tokenizer(cls, tokenizer_name, "tokenizer")


def shard_bounds(path, shard_bytes):
    """Byte offsets [0, b1, ..., size] cutting `path` into pieces of about `shard_bytes`, each starting a line."""
    size = Path(path).stat().st_size
    bounds = [0]
    with open(path, "rb") as f:
        while bounds[-1] + shard_bytes < size:
            f.seek(bounds[-1] + shard_bytes - 1)
            f.readline()  # to the end of the line that holds the target byte
            if f.tell() >= size:
                break
            bounds.append(f.tell())
    return bounds + [size]


def lines_before(path, offset):
    """How many lines start before byte `offset` (for error messages)."""
    n = 0
    with open(path, "rb") as f:
        while f.tell() < offset:
            n += f.read(min(1 << 20, offset - f.tell())).count(b"\n")
    return n


def read_chunks(path, start, end, stats, chunk_lines=CHUNK_LINES):
    """Yield lists of stripped, non-blank lines of bytes [start, end); fail on a line that is not UTF-8."""
    chunk = []
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        for lineno, raw in enumerate(f, 1):
            if pos >= end:
                break
            pos += len(raw)
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                where = lines_before(path, start) + lineno
                raise InputError(
                    f"{path} line {where} is not valid UTF-8 (byte {raw[e.start]:#04x} at column "
                    f"{e.start + 1}); re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None
            stats["lines"] += 1
            if not line:
                stats["blank"] += 1
                continue
            chunk.append(line)
            if len(chunk) == chunk_lines:
                yield chunk, pos
                chunk = []
    if chunk:
        yield chunk, pos


def encode_chunk(backend, lines, bos, sep, dtype):
    """Token ids of `bos line sep` for each line, as one flat array plus per-line lengths."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast skips char offsets
    encodings = encode([f"{bos} {line} {sep}" for line in lines], add_special_tokens=False)
    ids = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((i for seq in ids for i in seq), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


# -- one shard: the unit of work, of resumption and of the output ------------------------------------------

_worker = {}  # the tokenizer of a worker process, built once by _init_worker


def _init_worker(tokenizer_json, threads):
    """Each worker is one process: the Rust tokenizer's own thread pool would fight the other workers."""
    if not threads:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer_json)
    backend.no_truncation()  # some tokenizer.json files truncate by default; long lines are split in training
    backend.no_padding()
    _worker["backend"] = backend


def shard_files(folder, k):
    return {name: Path(folder) / f"{k:05d}.{name}" for name in ("tokens.npy", "lengths.npy", "json")}


def finished_shard(folder, k, settings):
    """The stats of shard `k` if a previous run finished it with the same settings and its arrays are whole
    (they open, and hold what its stats say), else None: a truncated or damaged shard is tokenized again."""
    files = shard_files(folder, k)
    try:
        stats = json.loads(files["json"].read_text())
        if stats.get("settings") != settings:
            return None
        tokens = np.load(files["tokens.npy"], mmap_mode="r", allow_pickle=False)
        lengths = np.load(files["lengths.npy"], mmap_mode="r", allow_pickle=False)
        whole = (tokens.ndim == lengths.ndim == 1 and tokens.dtype == np.dtype(settings["dtype"])
                 and len(tokens) == stats["n_tokens"] and len(lengths) == stats["n_sequences"]
                 and int(lengths.sum(dtype=np.int64)) == len(tokens))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return stats if whole else None


def binarize_shard(job):
    """Tokenize bytes [start, end) of the dump; write the shard's ids and lengths, then its stats (last,
    so a shard with stats is complete). Returns (k, stats). Runs in a worker process or in the main one."""
    k, folder, settings, progress = job["k"], job["folder"], job["settings"], job.get("progress")
    dtype = np.dtype(settings["dtype"])
    stats = {"lines": 0, "blank": 0, "short": 0}
    flats, lens = [], []
    pos = settings["start"]
    for lines, pos_after in read_chunks(settings["source"], settings["start"], settings["end"], stats):
        flat, lengths = encode_chunk(_worker["backend"], lines, settings["bos"], settings["sep"], dtype)
        keep = lengths >= settings["min_tokens"]
        if not keep.all():  # drop short sequences now, so they never take memory
            stats["short"] += int((~keep).sum())
            flat, lengths = flat[np.repeat(keep, lengths)], lengths[keep]
        flats.append(flat)
        lens.append(lengths)
        if progress is not None:
            progress(pos_after - pos)
        pos = pos_after
    tokens = np.concatenate(flats) if flats else np.zeros(0, dtype)
    lengths = np.concatenate(lens).astype(np.int32) if lens else np.zeros(0, np.int32)
    files = shard_files(folder, k)
    save_array(files["tokens.npy"], tokens)
    save_array(files["lengths.npy"], lengths)
    stats.update(n_sequences=len(lengths), n_tokens=len(tokens), max_id=int(tokens.max()) if len(tokens) else -1,
                 settings=settings)
    files["json"].write_text(json.dumps(stats))
    return k, stats


def parse_shard(text):
    """'i/n' -> (i, n), 0 <= i < n."""
    m = re.fullmatch(r"(\d+)/(\d+)", text or "")
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise InputError(f"--shard must be i/n with 0 <= i < n (this machine's part i of n), got {text!r}")
    return int(m[1]), int(m[2])


def check_input(path):
    if Path(path).is_dir():
        raise InputError(f"--file_path {path} is a folder: give the text dump, one sequence per line (step 1)")
    if not Path(path).is_file():
        raise InputError(f"{path} does not exist: write it with scripts/extract_wikipedia.py (step 1)")


def binarize(file_path, tokenizer, tokenizer_type, tokenizer_name, folder, min_tokens=12, num_proc=1,
             shard=(0, 1), shard_mb=None):
    """Tokenize `file_path` into shards in `folder`, resuming finished ones.

    Returns (the stats of every shard in input order, or None when other parts are still missing; meta).
    """
    path = Path(file_path)
    check_input(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty: re-run scripts/extract_wikipedia.py (step 1)")
    bos_name, sep_name = SPECIAL_TOKENS[tokenizer_type]
    if shard_mb is None:  # enough shards to keep many processes busy to the end, none too small to pay
        shard_mb = min(SHARD_MB, max(1.0, path.stat().st_size / 2**20 / 64))
    bounds = shard_bounds(path, max(1, int(shard_mb * 2**20)))
    n_shards = len(bounds) - 1
    source = path.stat()
    common = {"source": str(path.resolve()), "source_bytes": source.st_size, "source_mtime_ns": source.st_mtime_ns,
              "tokenizer_type": tokenizer_type, "vocab_digest": vocab_digest(tokenizer), "min_tokens": min_tokens,
              "bos": getattr(tokenizer, bos_name), "sep": getattr(tokenizer, sep_name),
              "dtype": ids_dtype(len(tokenizer)).name}
    settings = [dict(common, start=bounds[k], end=bounds[k + 1]) for k in range(n_shards)]
    folder.mkdir(parents=True, exist_ok=True)
    done = {k: s for k in range(n_shards) if (s := finished_shard(folder, k, settings[k])) is not None}
    part, parts = shard
    mine = range(part * n_shards // parts, (part + 1) * n_shards // parts)
    todo = [k for k in mine if k not in done]
    logger.info("%d shards of ~%.3g MB; this run's part %d/%d holds %d, %d already done; %d process(es)",
                n_shards, shard_mb, part, parts, len(mine), len(mine) - len(todo), max(1, min(num_proc, len(todo))))
    for k in todo:
        for file in shard_files(folder, k).values():
            remove_stale_tmp(file)

    start = time.time()
    lines = 0
    total = sum(bounds[k + 1] - bounds[k] for k in todo)
    jobs = [{"k": k, "folder": folder, "settings": settings[k]} for k in todo]
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    parallel = num_proc > 1 and len(jobs) > 1
    # fork: the workers start at once and need nothing re-imported; each builds its own tokenizer.
    pool = multiprocessing.get_context("fork").Pool(min(num_proc, len(jobs)), _init_worker, (tokenizer_json, False)) \
        if parallel else contextlib.nullcontext()
    with tqdm(total=total, unit="B", unit_scale=True, desc="binarize", mininterval=1) as bar, pool:
        if parallel:  # the bar moves a shard at a time
            results = pool.imap_unordered(binarize_shard, jobs)
        else:  # one process: the tokenizer's own threads use every core, and the bar moves a chunk at a time
            _init_worker(tokenizer_json, threads=True)
            results = (binarize_shard(dict(j, progress=bar.update)) for j in jobs)
        for k, stats in results:
            done[k] = stats
            lines += stats["lines"]
            if parallel:
                bar.update(settings[k]["end"] - settings[k]["start"])
    elapsed = time.time() - start
    if todo:
        logger.info("tokenized %d lines in %.1fs (%.0f lines/s)", lines, elapsed, lines / max(elapsed, 1e-9))
    missing = [k for k in range(n_shards) if k not in done]
    if missing:
        return None, {"missing": missing, "n_shards": n_shards}
    stats = [done[k] for k in range(n_shards)]
    meta = {
        "tokenizer_type": tokenizer_type,
        "tokenizer_name": tokenizer_name,
        "vocab_size": len(tokenizer),
        "special_token_ids": special_token_ids(tokenizer),
        "vocab_digest": common["vocab_digest"],  # train.py compares vocabularies by this, not by folder names
        "min_tokens": min_tokens,
        "source_file": str(path),
        "lines": sum(s["lines"] for s in stats),
        "blank_lines": sum(s["blank"] for s in stats),
        "dropped_short": sum(s["short"] for s in stats),
        "max_id": max(s["max_id"] for s in stats),
        "dtype": common["dtype"],
        "shards": n_shards,
        "binarize_seconds": round(elapsed, 2),
    }
    return stats, meta


def write_order(folder, stats, seed, valid_size=0):
    """offsets.npy (where each sequence starts, over all shards in input order) and order.npy (the shuffle:
    position i holds sequence order[i]), written a block at a time, and order.json, the shuffle's new id.
    Returns that id and the tokens of the first `valid_size` positions (the held-out part)."""
    n = sum(s["n_sequences"] for s in stats)

    def ends():  # each shard's sequence ends, shifted by everything before it
        last = 0
        yield np.zeros(1, np.int64)
        for k in range(len(stats)):
            block = last + np.cumsum(np.load(shard_files(folder, k)["lengths.npy"], mmap_mode="r"), dtype=np.int64)
            last = int(block[-1]) if len(block) else last
            yield block

    save_array_blocks(folder / "offsets.npy", np.int64, n + 1, ends())
    perm = np.random.default_rng(seed).permutation(n)  # the same draw as the one-process shuffle always made
    block = 1 << 22  # narrowed a block at a time: no second copy of the permutation
    save_array_blocks(folder / "order.npy", np.uint32 if n < 2**32 else np.int64, n,
                      (perm[i : i + block] for i in range(0, n, block)))
    order_id = save_order_stamp(folder, {"sequences": n, "seed": seed, "valid_size": valid_size})
    offsets, held_out = np.load(folder / "offsets.npy", mmap_mode="r"), perm[:valid_size]
    return order_id, int((offsets[held_out + 1] - offsets[held_out]).sum())


def output_path(dump_file, tokenizer_name, split=""):
    """Upstream's `<dump_file>.<tokenizer_name>.pickle`; a folder or org/name contributes its last part.

    A held-out split is named `<dump_file>.<tokenizer_name>.<split>.pickle`.
    """
    label = Path(tokenizer_name.rstrip("/\\")).name or tokenizer_name
    return Path(f"{dump_file}.{label}{'.' + split if split else ''}.pickle")


def positive(kind):
    def parse(text):
        value = kind(text)
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
        return value
    return parse


@reports_errors
def main(argv=None):
    parser = argparse.ArgumentParser(prog="binarized_data.py",
                                     description="Tokenize a one-sequence-per-line dump once, before distillation.")
    parser.add_argument("--file_path", default="data/dump.txt", help="text dump, one sequence per line (step 1)")
    parser.add_argument("--tokenizer_type", default="bert", help="bert | roberta | gpt2: picks the special tokens")
    parser.add_argument("--tokenizer_name", default="bert-base-uncased", help="hub name or local tokenizer folder")
    parser.add_argument("--dump_file", default="data/dump", help="output prefix: <prefix>.<tokenizer>.pickle")
    parser.add_argument("--min_tokens", type=int, default=12,
                        help="drop shorter sequences, special tokens included (train.py applies the same cut)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle of sequences (recorded in the file)")
    parser.add_argument("--valid_size", type=int, default=0,
                        help="hold out this many random sequences in <dump_file>.<tokenizer>.valid.pickle "
                             "for evaluation (0: none, as upstream)")
    parser.add_argument("--num_proc", type=positive(int), default=len(os.sched_getaffinity(0)),
                        help="tokenizing processes (default: this machine's cores)")
    parser.add_argument("--shard", default="0/1",
                        help="i/n: tokenize only part i of n (one per machine, on a shared file system)")
    parser.add_argument("--shard_mb", type=positive(float), default=None,
                        help="MB of the dump per shard, the unit of work and of resumption (default: the dump "
                             f"in 64 shards, each 1 to {SHARD_MB} MB)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    out = output_path(args.dump_file, args.tokenizer_name)
    folder, fresh = shards_folder(out), False
    try:
        if args.min_tokens < 1:
            raise InputError(f"--min_tokens must be at least 1, got {args.min_tokens}")
        if args.valid_size < 0:
            raise InputError(f"--valid_size must be at least 0, got {args.valid_size}")
        shard = parse_shard(args.shard)
        valid_out = output_path(args.dump_file, args.tokenizer_name, "valid")
        for path in [out] + ([valid_out] if args.valid_size else []):  # before the long work, not after it
            check_writable(path, "output")
        check_writable(folder, "shard folder", folder=True)
        fresh = not folder.exists()  # a folder this run creates is removed again if the input is bad
        check_input(args.file_path)  # before the tokenizer, which may wait on an unreachable hub
        tokenizer = load_tokenizer(args.tokenizer_type, args.tokenizer_name)
        logger.info("tokenizer %s: %d ids, %s", args.tokenizer_name, len(tokenizer), type(tokenizer).__name__)
        stats, meta = binarize(args.file_path, tokenizer, args.tokenizer_type, args.tokenizer_name, folder,
                               args.min_tokens, args.num_proc, shard, args.shard_mb)
        if stats is None:
            logger.info("%d of %d shards are still to do (%s): run the other parts, then any part again to write %s",
                        len(meta["missing"]), meta["n_shards"], ", ".join(map(str, meta["missing"][:8])), out)
            return 0
        n = sum(s["n_sequences"] for s in stats)
        if n == 0:
            raise InputError(
                f"no line of {args.file_path} has at least {args.min_tokens} tokens ({meta['lines']} lines, "
                f"{meta['blank_lines']} blank): check the file, or lower --min_tokens"
            )
        if args.valid_size >= n:
            raise InputError(f"--valid_size {args.valid_size} leaves no training data ({n} sequences kept): lower it")
        order_id, valid_tokens = write_order(folder, stats, args.seed, args.valid_size)
        shards = [{"file": shard_files(folder, k)["tokens.npy"].name, "n_tokens": s["n_tokens"],
                   "n_sequences": s["n_sequences"]} for k, s in enumerate(stats)]
        meta = dict(meta, seed=args.seed)
        n_tokens = sum(s["n_tokens"] for s in stats)
        if args.valid_size:
            save_manifest(valid_out, folder, shards, (0, args.valid_size),
                          dict(meta, split="valid", n_tokens=valid_tokens), order_id)
            logger.info("held out %d sequences in %s", args.valid_size, valid_out)
        elif valid_out.is_file():  # an earlier run's held-out file: its sequences are training ones now
            valid_out.unlink()
            logger.info("removed %s, an earlier run's held-out file (this run holds none out)", valid_out)
        save_manifest(out, folder, shards, (args.valid_size, n),
                      dict(meta, split="train", n_tokens=n_tokens - valid_tokens), order_id)
        for stale in folder.glob("[0-9][0-9][0-9][0-9][0-9].*"):  # shards of an earlier, longer dump
            if int(stale.name[:5]) >= len(stats):
                stale.unlink()
    except InputError:
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    except OSError as e:  # a full disk, a folder that vanished or turned read-only during the run
        where = e.filename or out
        hint = "free space" if e.errno == errno.ENOSPC else "check that it can be written"
        raise InputError(f"could not write {where} ({e.strerror or e}): {hint}, or pick another --dump_file") from e
    logger.info(
        "%d lines (%d blank); kept %d sequences, %d tokens (mean %.1f); dropped %d shorter than %d tokens",
        meta["lines"], meta["blank_lines"], n, n_tokens, n_tokens / n, meta["dropped_short"], args.min_tokens,
    )
    size = sum(f.stat().st_size for f in folder.iterdir()) + out.stat().st_size
    logger.info("wrote %s and %s/ (%.1f MB)", out, folder, size / 2**20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
