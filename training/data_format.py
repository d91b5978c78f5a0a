"""The pipeline's data format: binarized text and token counts, written and read.

Both keep upstream's file names (`binarized_text.<tokenizer>.pickle`, `token_counts.<tokenizer>.pickle`)
but hold a self-describing record instead of a bare list:

    binarized, format 2: {"format_version": 2, "kind": "binarized_text", "meta": {...},
                          "folder": "<name>.shards", "shards": [{"file", "n_tokens", "n_sequences"}, ...],
                          "order": [start, stop]}
        the folder holds the shards' token arrays, offsets.npy (global) and order.npy (the shuffle), all
        memory-mapped on load, and this file's positions are order[start:stop];
    binarized, format 1: {"format_version": 1, "kind": "binarized_text", "meta": {...},
                          "token_ids": flat uint16|int32 array, "offsets": int64 array of n_sequences + 1}
    token counts:        {"format_version": 1, "kind": "token_counts", "meta": {...}, "counts": int64 array}

Sequence g is the tokens [offsets[g], offsets[g + 1]) of the shards laid end to end: flat arrays, no Python
object per sequence. The format-2 manifest is JSON (it holds no array; pickled ones of earlier versions are
still read). Every pickle load goes through core.files' restricted unpickler (these files get passed between
people); the .npy arrays load with allow_pickle=False. Upstream's formats (a list of arrays; a list of ints)
are still read. Whether a file fits a tokenizer or a training set: training/data_checks.py. Nothing here
imports torch or transformers: the data scripts stay light.
"""

import hashlib
import json
import logging
import os
import pickle
import uuid
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.files import atomic_write, safe_load_pickle

FORMAT_VERSION = 1
logger = logging.getLogger("distillation")  # utils.py configures it (the data scripts do not import torch)
BINARIZED_KIND = "binarized_text"
TOKEN_COUNTS_KIND = "token_counts"


def vocab_digest(tokenizer):
    """A short hash of the tokenizer's token -> id map: two folders holding the same vocabulary agree."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


SPECIAL_TOKEN_NAMES = ("cls_token", "sep_token", "pad_token", "mask_token", "unk_token", "bos_token", "eos_token")


def special_token_ids(tokenizer):
    """{name: id} of the tokenizer's special tokens: written into binarized files, checked by train.py."""
    return {name: getattr(tokenizer, f"{name}_id") for name in SPECIAL_TOKEN_NAMES
            if getattr(tokenizer, name, None) is not None and getattr(tokenizer, f"{name}_id", None) is not None}


def ids_dtype(vocab_size):
    """uint16 while every id fits (half the bytes), int32 beyond: upstream silently wrapped ids > 65,535."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


class Binarized:
    """Tokenized sequences: flat token arrays (the shards, one after another) plus global offsets.

    Global sequence g is the concatenated tokens [offsets[g], offsets[g + 1]). `order`, when given, is the
    shuffle: position i holds sequence order[i]. Written by scripts/binarized_data.py, every array is a
    read-only memory map, so every training rank on a node shares one copy in the page cache.
    """

    def __init__(self, token_ids, offsets, meta=None, order=None, span=None):
        self.span = span  # format 2: (its folder, resolved; start; stop) of order.npy, for the overlap check
        shards = list(token_ids) if isinstance(token_ids, (list, tuple)) else [token_ids]
        self.shards = [s for s in shards if len(s)] or shards[:1]  # an empty shard holds no sequence
        self.offsets = offsets
        self.order = order
        self.meta = meta or {}
        self.token_starts = np.cumsum([0] + [len(s) for s in self.shards])  # where each shard's tokens begin
        self.sequence_starts = np.searchsorted(offsets, self.token_starts)  # and its first sequence

    def __len__(self):
        return len(self.order) if self.order is not None else len(self.offsets) - 1

    def __getitem__(self, i):
        return self.sequence(int(self.order[i]) if self.order is not None else i)

    def sequence(self, g):
        """Tokens of global sequence `g` (a view into its shard)."""
        t0, t1 = int(self.offsets[g]), int(self.offsets[g + 1])
        s = int(np.searchsorted(self.token_starts, t0, side="right")) - 1 if len(self.shards) > 1 else 0
        base = int(self.token_starts[s])
        return self.shards[s][t0 - base : t1 - base]

    @property
    def dtype(self):
        return self.shards[0].dtype

    @property
    def covers_all(self):
        """True when the positions are every sequence of the files (no held-out part elsewhere)."""
        return self.order is None or len(self.order) == len(self.offsets) - 1

    @property
    def n_tokens(self):
        if self.covers_all:
            return int(self.token_starts[-1])
        return sum(int(self.lengths_at(np.arange(i, min(i + (1 << 20), len(self)))).sum())
                   for i in range(0, len(self), 1 << 20))

    @property
    def token_ids(self):
        """The tokens of every position as one array, in file (not shuffled) order; a copy unless they are
        one whole shard. For small sets: a corpus goes through blocks()."""
        if not self.covers_all:
            return self.gather(np.arange(len(self)))
        return self.shards[0] if len(self.shards) == 1 else np.concatenate(self.shards)

    def global_index(self, positions):
        positions = np.asarray(positions)
        return positions if self.order is None else np.asarray(self.order[positions], dtype=np.int64)

    def lengths_at(self, positions):
        """Lengths of the sequences at `positions` (vectorized)."""
        g = self.global_index(positions)
        return (self.offsets[g + 1] - self.offsets[g]).astype(np.int64)

    @property
    def lengths(self):
        return self.lengths_at(np.arange(len(self)))

    def blocks(self, block=1 << 24):
        """The tokens of every position in pieces of at most about `block`, in no particular order (for
        counts and scans). A held-out part is skipped (its sequences are gathered a few thousand at once)."""
        if self.covers_all:
            for shard in self.shards:
                for start in range(0, len(shard), block):
                    yield shard[start : start + block]
            return
        step = max(1, block // 256)  # positions a piece: ~block tokens at Wikipedia's lengths, or fewer
        for i in range(0, len(self), step):
            yield self.gather(np.arange(i, min(i + step, len(self))))

    def gather(self, positions):
        """The tokens of the sequences at `positions`, concatenated in file order (vectorized)."""
        g = np.sort(self.global_index(positions))
        t0 = np.asarray(self.offsets[g])
        lengths = np.asarray(self.offsets[g + 1]) - t0
        shard_of = np.searchsorted(self.token_starts, t0, side="right") - 1
        parts = []
        for s in np.unique(shard_of):
            m = shard_of == s
            first, n = t0[m] - self.token_starts[s], lengths[m]
            parts.append(self.shards[s][np.repeat(first - offsets_from_lengths(n)[:-1], n) + np.arange(n.sum())])
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    def max_id(self):
        """The largest token id in the shards, scanned (not the binarizer's record: an id damaged on disk must
        be seen before training indexes an embedding with it). Every shard is read, held-out part included:
        ~0.1 s per 100M tokens from the page cache."""
        block = 1 << 24
        return max((int(s[i : i + block].max()) for s in self.shards for i in range(0, len(s), block)), default=-1)

    def head(self, n):
        """The first `n` positions."""
        order = np.arange(min(n, len(self))) if self.order is None else self.order[:n]
        span = None if self.span is None else (self.span[0], self.span[1], self.span[1] + len(order))
        return Binarized(self.shards, self.offsets, self.meta, order, span)

    def sequences(self):
        """A list of per-sequence arrays in position order, the shape upstream's readers expect."""
        return [self[i] for i in range(len(self))]

    @classmethod
    def from_sequences(cls, seqs, meta=None):
        """From upstream's form, a list of 1-D integer arrays (one per sequence)."""
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        token_ids = np.concatenate(seqs) if len(seqs) else np.zeros(0, dtype=np.uint16)
        return cls(token_ids, offsets_from_lengths(lengths), meta or {})


def offsets_from_lengths(lengths):
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def save_binarized(path, token_ids, offsets, meta):
    """Format 1: one pickle holding everything (small sets; the binarizer writes format 2)."""
    meta = dict(meta, n_sequences=len(offsets) - 1, n_tokens=int(offsets[-1]), dtype=str(token_ids.dtype))
    record = {
        "format_version": 1,
        "kind": BINARIZED_KIND,
        "meta": meta,
        "token_ids": np.ascontiguousarray(token_ids),
        "offsets": np.ascontiguousarray(offsets, dtype=np.int64),
    }
    with atomic_write(path) as f:
        pickle.dump(record, f, protocol=5)


def save_array(path, array):
    """An .npy file, written atomically (np.load(mmap_mode="r") maps it back)."""
    with atomic_write(path) as f:
        np.save(f, np.ascontiguousarray(array))


def save_array_blocks(path, dtype, n, blocks):
    """An .npy file of `n` items of `dtype`, written atomically from `blocks` (arrays, one after another),
    so the whole array is never in memory."""
    dtype = np.dtype(dtype)
    with atomic_write(path) as f:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
        np.lib.format.write_array_header_1_0(f, header)
        written = 0
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=dtype)
            f.write(memoryview(block))
            written += len(block)
        if written != n:
            raise ValueError(f"{path}: {written} items written, {n} announced")


def shards_folder(path):
    """Where a format-2 manifest `x.pickle` keeps its arrays: the folder `x.shards` beside it."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".pickle") + ".shards")


ORDER_STAMP = "order.json"  # beside order.npy: the id of the shuffle it holds, new at every write


def save_order_stamp(folder, record):
    """A new id for the shuffle just written to folder/order.npy: a manifest that names another id was
    written for an earlier shuffle, and its positions mean other sequences now."""
    record = dict(record, order_id=uuid.uuid4().hex)
    with atomic_write(Path(folder) / ORDER_STAMP, "w") as f:
        json.dump(record, f)
    return record["order_id"]


def save_manifest(path, folder, shards, order_range, meta, order_id=None):
    """Format 2: a small record naming the arrays in `folder` (relative to the manifest), and which
    slice [start, stop) of the shuffled order (folder/order.npy, whose id is `order_id`) this file holds."""
    start, stop = order_range
    record = {
        "format_version": 2,
        "kind": BINARIZED_KIND,
        "meta": dict(meta, n_sequences=stop - start),
        "folder": os.path.relpath(folder, Path(path).parent),
        "shards": [dict(s) for s in shards],  # {"file", "n_tokens", "n_sequences"} each
        "order": [int(start), int(stop)],
        "order_id": order_id,
    }
    with atomic_write(path, "w") as f:  # JSON: it holds no array (earlier versions pickled it; still read)
        json.dump(record, f, indent=1, default=lambda v: v.item())  # numpy ints in the counts: JSON numbers
        f.write("\n")


def _read_manifest(path):
    """A JSON manifest, or None when `path` is not one (a pickle: the other formats, or a manifest pickled by
    an earlier version)."""
    with open(path, "rb") as f:
        head = f.read(1)
    if head != b"{":  # every pickle starts with its protocol byte, every manifest with its object
        return None
    try:
        obj = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is truncated or damaged (not a whole JSON manifest: {e}): "
                         f"{BINARIZE_REMEDY}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a JSON {type(obj).__name__}, not a manifest: {BINARIZE_REMEDY}")
    return obj


BINARIZE_REMEDY = "re-create it with scripts/binarized_data.py"


def _mapped(path, file, remedy):
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path} names {file}, which is missing: keep the .pickle beside its .shards folder, "
                         f"or {remedy}") from None
    except (ValueError, OSError) as e:
        raise InputError(f"{file} (named by {path}) is damaged ({e}): {remedy}") from None


def _load_manifest(path, obj):
    folder = Path(path).parent / obj.get("folder", "")
    shards = obj.get("shards")
    if not isinstance(shards, list) or not shards or not isinstance(obj.get("order"), list):
        raise InputError(f"{path} names no shards: {BINARIZE_REMEDY}")
    arrays = [_mapped(path, folder / s["file"], BINARIZE_REMEDY) for s in shards]
    offsets = _mapped(path, folder / "offsets.npy", BINARIZE_REMEDY)
    order = _mapped(path, folder / "order.npy", BINARIZE_REMEDY)
    start, stop = obj["order"]
    n_tokens = sum(len(a) for a in arrays)
    if (
        any(a.ndim != 1 or len(a) != s["n_tokens"] or a.dtype.kind not in "iu" for a, s in zip(arrays, shards))
        or offsets.ndim != 1
        or len(offsets) != sum(s["n_sequences"] for s in shards) + 1
        or offsets[-1] != n_tokens
        or not 0 <= start <= stop <= len(order)
        or len(order) != len(offsets) - 1
        or order.dtype.kind not in "iu"
    ):
        raise InputError(f"the arrays in {folder} do not match {path} (a re-run half done?): {BINARIZE_REMEDY}")
    check_stamp(path, obj, folder)
    check_contents(folder, shards, offsets, order)
    return Binarized(arrays, offsets, dict(obj["meta"]), order[start:stop], (folder.resolve(), start, stop))


def check_stamp(path, obj, folder):
    """The manifest must name the shuffle now in its folder (a file from an earlier run that was not
    rewritten, e.g. a .valid.pickle after a re-run with --valid_size 0, names an older one)."""
    if obj.get("order_id") is None:  # written before shuffles had ids
        return
    try:
        current = json.loads((folder / ORDER_STAMP).read_text()).get("order_id")
    except (OSError, ValueError, AttributeError):
        current = None
    if current != obj["order_id"]:
        raise InputError(f"{path} is stale: {folder} has been binarized again since it was written, and its "
                         f"positions now mean other sequences (perhaps training ones): delete it, or re-run "
                         f"scripts/binarized_data.py with the --valid_size that writes it")


CHECK_BLOCK = 1 << 22  # items per vectorized check: a few tens of MB of temporaries whatever the corpus


def check_contents(folder, shards, offsets, order):
    """What the arrays hold, not only their sizes: offsets start at 0, never decrease, meet every shard's
    boundary and agree with each shard's lengths.npy; order is a permutation of the sequence numbers (no
    repeat, none out of range). Damage that keeps the sizes would otherwise train on wrong sequences without
    a word, or fail mid-epoch. O(sequences), in blocks (docs/data_files.md has its time at 5M sequences)."""
    n = len(order)
    bad = None
    if n + 1 != len(offsets) or offsets[0] != 0:
        bad = "offsets.npy does not start at 0"
    ends_seq = np.cumsum([s["n_sequences"] for s in shards])
    ends_tok = np.cumsum([s["n_tokens"] for s in shards])
    if bad is None and not np.array_equal(np.asarray(offsets[ends_seq]), ends_tok):
        bad = "offsets.npy does not meet the shards' boundaries"
    for i in range(0, n, CHECK_BLOCK) if bad is None else ():
        if np.any(np.diff(offsets[i : i + CHECK_BLOCK + 1]) < 0):
            bad = "offsets.npy decreases"
            break
    first = 0  # each shard's lengths.npy (written beside its tokens) must give the same sequence boundaries
    for shard in shards if bad is None else ():
        lengths_file = folder / shard["file"].replace(".tokens.npy", ".lengths.npy")
        if lengths_file != folder / shard["file"] and lengths_file.is_file():
            lengths = _mapped(folder / shard["file"], lengths_file, BINARIZE_REMEDY)
            if len(lengths) != shard["n_sequences"]:
                bad = f"{lengths_file.name} does not hold {shard['n_sequences']} lengths"
            for i in range(0, len(lengths), CHECK_BLOCK) if bad is None else ():
                j = min(i + CHECK_BLOCK, len(lengths))
                if np.any(np.diff(offsets[first + i : first + j + 1]) != lengths[i:j]):
                    bad = f"offsets.npy and {lengths_file.name} disagree on where sequences end"
                    break
        first += shard["n_sequences"]
        if bad:
            break
    if bad is None and n:
        seen = np.zeros(n, bool)
        for i in range(0, n, CHECK_BLOCK):
            block = order[i : i + CHECK_BLOCK]
            if int(block.max()) >= n:
                bad = f"order.npy holds sequence {int(block.max())} of {n}"
                break
            seen[block] = True
        if bad is None and not seen.all():
            bad = f"order.npy repeats sequences ({n - int(seen.sum())} never appear)"
    if bad:
        raise InputError(f"{folder} is damaged: {bad}: {BINARIZE_REMEDY}")


def load_binarized(path):
    """Load a binarized file: format 2 (a JSON manifest of memory-mapped shards, or one pickled by an earlier
    version), format 1 (one pickle), or upstream's list of arrays."""
    if Path(path).is_file() and Path(path).stat().st_size and (obj := _read_manifest(path)) is not None:
        if obj.get("kind") != BINARIZED_KIND:
            raise InputError(f"{path} holds {obj.get('kind')!r} data, but {BINARIZED_KIND!r} was expected: "
                             f"{BINARIZE_REMEDY}")
        if obj.get("format_version") != 2:
            raise InputError(f"{path} has format version {obj.get('format_version')!r}; this code reads 1 and 2: "
                             f"{BINARIZE_REMEDY}")
        return _load_manifest(path, obj)
    obj = safe_load_pickle(path, remedy=BINARIZE_REMEDY)
    if isinstance(obj, list):  # upstream: a shuffled list of per-sequence uint16/int32 arrays
        if not all(isinstance(s, np.ndarray) and s.ndim == 1 and s.dtype.kind in "iu" for s in obj):
            raise InputError(f"{path} is a list but not of 1-D integer arrays: {BINARIZE_REMEDY}")
        meta = {"format_version": 0, "source": "upstream list of arrays", "n_sequences": len(obj)}
        return Binarized.from_sequences(obj, meta)
    if isinstance(obj, dict) and obj.get("kind") == BINARIZED_KIND and obj.get("format_version") == 2:
        return _load_manifest(path, obj)
    _check_record(path, obj, BINARIZED_KIND, ("token_ids", "offsets"), BINARIZE_REMEDY, reads="1 and 2")
    token_ids, offsets = obj["token_ids"], obj["offsets"]
    if (
        token_ids.ndim != 1
        or offsets.ndim != 1
        or len(offsets) < 1
        or offsets[0] != 0
        or offsets[-1] != len(token_ids)
        or np.any(np.diff(offsets) < 0)
    ):
        raise InputError(f"{path} has offsets that do not match its token array: {BINARIZE_REMEDY}")
    return Binarized(token_ids, offsets, dict(obj["meta"]))


TOKEN_COUNTS_REMEDY = "re-create it with scripts/token_counts.py"


def save_token_counts(path, counts, meta):
    record = {
        "format_version": FORMAT_VERSION,
        "kind": TOKEN_COUNTS_KIND,
        "meta": dict(meta, vocab_size=len(counts), n_tokens=int(counts.sum())),
        "counts": np.asarray(counts, dtype=np.int64),
    }
    with atomic_write(path) as f:
        pickle.dump(record, f, protocol=5)


def load_token_counts(path):
    """Return (counts as an int64 array indexed by token id, meta). Reads upstream's list of ints too."""
    obj = safe_load_pickle(path, remedy=TOKEN_COUNTS_REMEDY)
    if isinstance(obj, list):
        if not all(isinstance(c, (int, np.integer)) for c in obj):
            raise InputError(f"{path} is a list but not of integer counts: {TOKEN_COUNTS_REMEDY}")
        return np.asarray(obj, dtype=np.int64), {"format_version": 0, "source": "upstream list of counts"}
    _check_record(path, obj, TOKEN_COUNTS_KIND, ("counts",), TOKEN_COUNTS_REMEDY)
    return obj["counts"], dict(obj["meta"])


def _check_record(path, obj, kind, arrays, remedy, reads=str(FORMAT_VERSION)):
    if not isinstance(obj, dict) or "kind" not in obj:
        raise InputError(f"{path} holds a {type(obj).__name__}, not a {kind} record: {remedy}")
    if obj["kind"] != kind:
        raise InputError(f"{path} holds {obj['kind']!r} data, but {kind!r} was expected: {remedy}")
    if obj.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path} has format version {obj.get('format_version')!r}; this code reads {reads}: {remedy}"
        )
    for name in arrays:
        a = obj.get(name)
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu":
            raise InputError(f"{path} lacks an integer array {name!r}: {remedy}")
