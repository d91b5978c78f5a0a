"""Step 2: tokenize a text dump once, so training never re-tokenizes.

    python scripts/binarized_data.py --file_path data/dump.txt --tokenizer_type bert \
        --tokenizer_name bert-base-uncased --dump_file data/binarized_text

writes data/binarized_text.bert-base-uncased.pickle: every line of the dump as [CLS] ... [SEP] token ids
(upstream's special tokens per --tokenizer_type), keeping only sequences of at least --min_tokens tokens,
shuffled with --seed. The reference run kept 5,355,344 sequences (~200M tokens) of ~5M Wikipedia
sentences. See data_io.py for the file format (flat id array + offsets + metadata, loaded safely).

Compared with upstream's script, which reads the whole file with readlines() and keeps a Python list of
ints per line until the end: the input is streamed in chunks, each chunk is tokenized by the Rust
tokenizer on all cores (`encode_batch`), and ids go straight into compact uint16/int32 arrays, so memory
stays close to the size of the output. benchmarks/bench_binarize.py measures both side by side.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import utils
from data_io import (
    check_writable,
    ids_dtype,
    offsets_from_lengths,
    save_binarized,
    special_token_ids,
    vocab_digest,
)
from errors import InputError, reports_errors

logger = logging.getLogger("binarized_data")

# bos / sep wrapped around each line, as upstream does it: attribute names on the tokenizer.
SPECIAL_TOKENS = {"bert": ("cls_token", "sep_token"), "roberta": ("cls_token", "sep_token"),
                  "gpt2": ("bos_token", "eos_token")}
CHUNK_LINES = 1_000  # lines per encode_batch call: enough to keep every core busy, few enough to bound memory


def load_tokenizer(tokenizer_type, tokenizer_name):
    if tokenizer_type not in SPECIAL_TOKENS:
        raise InputError(f"unknown --tokenizer_type {tokenizer_type!r}: use one of {', '.join(SPECIAL_TOKENS)}")
    # The *Fast classes are the Rust tokenizers under both transformers 4 and 5 (in 5, BertTokenizer is too).
    import transformers

    cls = {"bert": transformers.BertTokenizerFast, "roberta": transformers.RobertaTokenizerFast,
           "gpt2": transformers.GPT2TokenizerFast}[tokenizer_type]
    return utils.load_tokenizer(cls, tokenizer_name, "tokenizer")


def read_chunks(path, chunk_lines, stats, progress):
    """Yield lists of stripped, non-blank lines; fail on the first line that is not UTF-8."""
    chunk = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            progress.update(len(raw))
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{path} line {lineno} is not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None
            stats["lines"] += 1
            if not line:
                stats["blank"] += 1
                continue
            chunk.append(line)
            if len(chunk) == chunk_lines:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def encode_chunk(backend, lines, bos, sep, dtype):
    """Token ids of `bos line sep` for each line, as one flat array plus per-line lengths."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast skips char offsets
    encodings = encode([f"{bos} {line} {sep}" for line in lines], add_special_tokens=False)
    ids = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((i for seq in ids for i in seq), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def shuffle_chunks(chunks, rng):
    """Concatenate the sequences held in `chunks` ((flat ids, lengths) pairs) in a random order.

    Each chunk's tokens are scattered straight to their shuffled places, and the chunk is freed right
    after: peak memory is the chunks plus the output, with no concatenated copy in between.
    Output sequence i is input sequence perm[i], perm = rng.permutation(number of sequences).
    """
    lengths = np.concatenate([lens for _, lens in chunks])
    perm = rng.permutation(len(lengths))
    offsets = offsets_from_lengths(lengths[perm])
    start = np.empty(len(lengths), dtype=np.int64)  # where input sequence j starts in the output
    start[perm] = offsets[:-1]
    out = np.empty(offsets[-1], dtype=chunks[0][0].dtype)
    seq = 0
    chunks.reverse()
    while chunks:
        flat, lens = chunks.pop()
        shift = start[seq : seq + len(lens)] - offsets_from_lengths(lens)[:-1]
        out[np.repeat(shift, lens) + np.arange(len(flat))] = flat
        seq += len(lens)
    return out, offsets


def check_input(path):
    if not Path(path).is_file():
        raise InputError(f"{path} does not exist: write it with scripts/extract_wikipedia.py (step 1)")


def binarize(file_path, tokenizer, tokenizer_type, tokenizer_name, min_tokens=12, seed=0):
    """Tokenize `file_path`; return (token_ids, offsets, meta) of the kept sequences, shuffled."""
    path = Path(file_path)
    check_input(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty: re-run scripts/extract_wikipedia.py (step 1)")

    backend = tokenizer.backend_tokenizer
    backend.no_truncation()  # some tokenizer.json files truncate by default; long lines are split in training
    backend.no_padding()
    bos_name, sep_name = SPECIAL_TOKENS[tokenizer_type]
    bos, sep = getattr(tokenizer, bos_name), getattr(tokenizer, sep_name)
    vocab_size = len(tokenizer)
    dtype = ids_dtype(vocab_size)

    stats = {"lines": 0, "blank": 0, "short": 0}
    chunks = []
    start = time.time()
    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="binarize", mininterval=1) as progress:
        for lines in read_chunks(path, CHUNK_LINES, stats, progress):
            flat, lengths = encode_chunk(backend, lines, bos, sep, dtype)
            keep = lengths >= min_tokens
            if not keep.all():  # drop short sequences now, so they never take memory
                stats["short"] += int((~keep).sum())
                flat = flat[np.repeat(keep, lengths)]
                lengths = lengths[keep]
            if len(lengths):
                chunks.append((flat, lengths))
    elapsed = time.time() - start

    if not chunks:
        raise InputError(
            f"no line of {path} has at least {min_tokens} tokens ({stats['lines']} lines, {stats['blank']} blank): "
            "check the file, or lower --min_tokens"
        )
    token_ids, offsets = shuffle_chunks(chunks, np.random.default_rng(seed))

    meta = {
        "tokenizer_type": tokenizer_type,
        "tokenizer_name": tokenizer_name,
        "vocab_size": vocab_size,
        "special_token_ids": special_token_ids(tokenizer),
        "vocab_digest": vocab_digest(tokenizer),  # train.py compares vocabularies by this, not by folder names
        "min_tokens": min_tokens,
        "seed": seed,
        "source_file": str(path),
        "lines": stats["lines"],
        "blank_lines": stats["blank"],
        "dropped_short": stats["short"],
        "binarize_seconds": round(elapsed, 2),
    }
    return token_ids, offsets, meta


def output_path(dump_file, tokenizer_name, split=""):
    """Upstream's `<dump_file>.<tokenizer_name>.pickle`; a folder or org/name contributes its last part.

    A held-out split is named `<dump_file>.<tokenizer_name>.<split>.pickle`.
    """
    label = Path(tokenizer_name.rstrip("/\\")).name or tokenizer_name
    return Path(f"{dump_file}.{label}{'.' + split if split else ''}.pickle")


def split_off(token_ids, offsets, n):
    """The first `n` sequences, and the rest, each as (token_ids, offsets); views, no copies."""
    cut = offsets[n]
    return (token_ids[:cut], offsets[: n + 1]), (token_ids[cut:], offsets[n:] - cut)


@reports_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description="Tokenize a one-sequence-per-line dump once, before distillation.")
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
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    try:
        if args.min_tokens < 1:
            raise InputError(f"--min_tokens must be at least 1, got {args.min_tokens}")
        if args.valid_size < 0:
            raise InputError(f"--valid_size must be at least 0, got {args.valid_size}")
        out = output_path(args.dump_file, args.tokenizer_name)
        valid_out = output_path(args.dump_file, args.tokenizer_name, "valid")
        for path in [out] + ([valid_out] if args.valid_size else []):  # before the long work, not after it
            check_writable(path, "output")
        check_input(args.file_path)  # before the tokenizer, which may wait on an unreachable hub
        tokenizer = load_tokenizer(args.tokenizer_type, args.tokenizer_name)
        logger.info("tokenizer %s: %d ids, %s", args.tokenizer_name, len(tokenizer), type(tokenizer).__name__)
        token_ids, offsets, meta = binarize(args.file_path, tokenizer, args.tokenizer_type, args.tokenizer_name,
                                            args.min_tokens, args.seed)
        n, n_tokens = len(offsets) - 1, int(offsets[-1])
        if args.valid_size:
            if args.valid_size >= n:
                raise InputError(f"--valid_size {args.valid_size} leaves no training data ({n} sequences kept): "
                                 "lower it")
            (valid_ids, valid_offsets), (token_ids, offsets) = split_off(token_ids, offsets, args.valid_size)
            save_binarized(valid_out, valid_ids, valid_offsets, dict(meta, split="valid"))
            logger.info("held out %d sequences in %s", args.valid_size, valid_out)
        save_binarized(out, token_ids, offsets, dict(meta, split="train"))
    except OSError as e:  # a full disk, a folder that vanished during the run
        raise InputError(f"could not write {out} ({e.strerror or e}): free space or pick another --dump_file") from e
    logger.info(
        "%d lines (%d blank) in %.1fs (%.0f lines/s); kept %d sequences, %d tokens (mean %.1f); "
        "dropped %d shorter than %d tokens",
        meta["lines"], meta["blank_lines"], meta["binarize_seconds"],
        meta["lines"] / max(meta["binarize_seconds"], 1e-9),
        n, n_tokens, n_tokens / n, meta["dropped_short"], args.min_tokens,
    )
    logger.info("wrote %s (%.1f MB)", out, out.stat().st_size / 2**20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
