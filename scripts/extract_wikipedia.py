"""Step 1 of the recipe: sample Wikipedia articles and write them out one sentence per line.

    python scripts/extract_wikipedia.py                      # the reference run: 236,370 articles
    python scripts/extract_wikipedia.py --source data/synthetic_wiki.jsonl --num_articles 1000

Writes
    data/dump.txt          one sentence per line, UTF-8, no blank lines. The reference run gets about
                           5 million sentences from 236,370 of the dump's 6.4 M articles.
    data/dump.stats.json   articles, sentences seen and kept, lines, words, the sentence-length histogram
                           (in words) and the arguments used; named after --output.

The default source is the Hugging Face dataset `wikimedia/wikipedia`, config `20231101.en`: the first run
downloads it (roughly 11 GB of parquet) and `datasets` turns it into a memory-mapped Arrow cache
(roughly 20 GB) under HF_DATASETS_CACHE. Local files with the same schema (one article per record with
`title` and `text`: .parquet, .jsonl or .json) work offline; several sources are read as one corpus.
Local files are cached as Arrow too, so only the sampled articles are ever read into Python.

Each article's text has paragraphs separated by blank lines and section headings ("Early life",
"See also") on lines of their own. A line is a heading when it is short (at most HEADING_MAX_WORDS words)
and does not end like a sentence (. ! ? or …, maybe followed by a closing quote or bracket). The other
lines are split into sentences with sentencex, which is rule-based (no downloaded data) and keeps
"Dr. Smith", "the U.S. Army", "4 p.m. on", "3.5 km" and "J. R. R. Tolkien" whole (one fix on top: it
took the "m." of "499 m. The" for an abbreviation). Sentences shorter than --min_words words are dropped.
--pack_words N joins consecutive sentences of one article into lines of up to N words instead (off by
default, so the default run is one sentence per line).
"""

import argparse
import collections
import contextlib
import functools
import json
import multiprocessing
import os
import re
import sys
from pathlib import Path

import numpy as np
import sentencex
from tqdm import tqdm

from core.errors import InputError, reports_errors
from core.files import atomic_write, check_writable

LANGUAGE = "en"  # sentencex's rules for English, to match the 20231101.en config
HEADING_MAX_WORDS = 10  # headings are short ("Early life and career"); longer unpunctuated lines are kept
SENTENCE_END = re.compile(r"[.!?…][\"'”’»)\]]*$")  # final punctuation, maybe inside quotes or brackets
# sentencex reads "m." as an abbreviation (Wikipedia's "m. 1950", married), so "rises to 499 m. The river"
# stays one sentence; after a number, "m." followed by a capital is metres ending a sentence.
METRES_THEN_CAPITAL = re.compile(r"(?<=\d m\.)\s+(?=[A-Z])")
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}  # file extension -> datasets builder
BATCH_SIZE = 64  # articles per task sent to a worker: ~250 KB of Wikipedia text
SOURCE_HINT = "give a .parquet, .jsonl or .json file of articles with title and text fields"


# ---- load and sample ----


def load_articles(source, config=None):
    """A memory-mapped `datasets.Dataset` with columns title and text, from one source or a list of them.

    A source is a local .parquet/.jsonl/.json file or a Hugging Face dataset name (with `config`).
    Raises InputError, with a one-line message, for a source that is missing, empty, of an unknown
    type, or lacks the title/text fields.
    """
    import datasets  # imported here: it is slow to import, and pool workers never need it

    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    parts = []
    for src in map(str, sources):
        ds = _load_local(src) if _is_local(src) else _load_hub(src, config)
        missing = [field for field in ("title", "text") if field not in ds.column_names]
        if missing:
            raise InputError(
                f"{src} has no {' or '.join(missing)} field (its fields: {', '.join(ds.column_names)}): "
                f"{SOURCE_HINT}"
            )
        if len(ds) == 0:
            raise InputError(f"{src} holds no articles: {SOURCE_HINT}")
        parts.append(ds.select_columns(["title", "text"]))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _is_local(source):
    # A hub name ("wikimedia/wikipedia") has no file extension; anything with one is meant as a file.
    return Path(source).suffix != "" or Path(source).exists()


def _load_local(path):
    import datasets

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder: name its files instead, e.g. --source {path}/*.parquet")
    if path.suffix not in LOCAL_FORMATS:
        raise InputError(f"{path}: unsupported file type {path.suffix!r}; {SOURCE_HINT}")
    if not path.is_file():
        raise InputError(f"{path} does not exist: check the path, or {SOURCE_HINT}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty: {SOURCE_HINT}")
    try:
        return datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=[str(path)], split="train")
    except datasets.exceptions.DatasetGenerationError as e:
        raise InputError(f"{path} is not readable as {path.suffix} ({e.__cause__ or e}): {SOURCE_HINT}") from None
    except ValueError:  # a file of blank lines: datasets finds no records in it
        raise InputError(f"{path} holds no articles: {SOURCE_HINT}") from None


def _load_hub(name, config):
    import datasets

    try:
        return datasets.load_dataset(name, config, split="train")
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:  # offline, no such name or config
        raise InputError(
            f"could not load dataset {name!r} (config {config!r}) from the Hugging Face hub "
            f"({type(e).__name__}: {e}): check the name, --config and your network, or {SOURCE_HINT}"
        ) from None


def sample_indices(n_total, n, seed):
    """`n` distinct article indices drawn uniformly from range(n_total), sorted; all of them if n >= n_total.

    Sorted so that reading walks the Arrow files forward. The dump's order does not matter downstream:
    binarization shuffles the sequences (as upstream's binarized_data.py does).
    """
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


# ---- split, filter, pack ----


def is_heading(line):
    """A section heading: a short line that does not end like a sentence."""
    return len(line.split()) <= HEADING_MAX_WORDS and not SENTENCE_END.search(line)


def split_sentences(text):
    """The sentences of an article's text, in order: headings and blank lines dropped, whitespace collapsed."""
    sentences = []
    # splitlines() breaks where a reader of the dump would (\r, U+2028, ...), so no break survives inside.
    for line in (text or "").splitlines():  # a null text, possible in a local file, gives nothing
        line = line.strip()
        if not line or is_heading(line):
            continue
        for segment in sentencex.segment(LANGUAGE, line):
            for sentence in METRES_THEN_CAPITAL.split(segment):
                # sentencex keeps the space after a sentence; tabs and runs of spaces become one space, so
                # that n_words can count spaces.
                sentence = " ".join(sentence.split())
                if sentence:
                    sentences.append(sentence)
    return sentences


def n_words(sentence):
    """Words in a sentence from split_sentences (single spaces between words)."""
    return sentence.count(" ") + 1


def pack(sentences, max_words):
    """Join consecutive sentences into lines of at most `max_words` words; a longer sentence stays alone."""
    lines, current, n = [], [], 0
    for sentence in sentences:
        words = n_words(sentence)
        if current and n + words > max_words:
            lines.append(" ".join(current))
            current, n = [], 0
        current.append(sentence)
        n += words
    if current:
        lines.append(" ".join(current))
    return lines


def _split_article(text, min_words, pack_words):
    """(lines to write, number of sentences seen, word counts of the sentences kept) for one article."""
    sentences = split_sentences(text)
    kept = [s for s in sentences if n_words(s) >= min_words]
    lines = pack(kept, pack_words) if pack_words > 0 else kept
    return lines, len(sentences), [n_words(s) for s in kept]


def article_sentences(text, min_words=3, pack_words=0):
    """The lines one article contributes to the dump."""
    return _split_article(text, min_words, pack_words)[0]


# ---- extract ----


def _split_batch(texts, min_words, pack_words):
    """One worker task: (articles, the lines as one string to write, lines, sentences seen, length counts).

    The lines travel back joined: one string pickles much faster than thousands of small ones.
    """
    lines, seen, lengths = [], 0, collections.Counter()
    for text in texts:
        article_lines, article_seen, article_lengths = _split_article(text, min_words, pack_words)
        lines += article_lines
        seen += article_seen
        lengths.update(article_lengths)
    return len(texts), "".join(line + "\n" for line in lines), len(lines), seen, lengths


def _ordered_imap(pool, fn, items, max_pending):
    """pool.imap with back-pressure: imap would read every batch into its queue before the workers catch up."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= max_pending:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def extract(articles, indices, output, min_words=3, pack_words=0, num_proc=1, batch_size=BATCH_SIZE):
    """Split the articles at `indices` and write their lines to `output`; return the counts as a dict.

    The output appears only once it is complete. With num_proc > 1, worker processes split batches of
    articles while this one reads the next batches and writes the finished ones, in order: the output is
    the same for any num_proc.
    """
    texts = (batch["text"] for batch in articles.select_columns(["text"]).select(indices).iter(batch_size))
    split = functools.partial(_split_batch, min_words=min_words, pack_words=pack_words)
    counts = {"articles": 0, "sentences_seen": 0, "sentences_kept": 0, "lines": 0, "words": 0}
    histogram = collections.Counter()
    with contextlib.ExitStack() as stack:
        if num_proc > 1:
            pool = stack.enter_context(multiprocessing.Pool(num_proc))
            results = _ordered_imap(pool, split, texts, max_pending=4 * num_proc)
        else:
            results = map(split, texts)
        out = stack.enter_context(atomic_write(output, "w"))
        bar = stack.enter_context(tqdm(total=len(indices), unit=" articles", desc=f"writing {output}"))
        for n_articles, chunk, n_lines, seen, lengths in results:
            out.write(chunk)
            counts["articles"] += n_articles
            counts["sentences_seen"] += seen
            counts["sentences_kept"] += lengths.total()
            counts["lines"] += n_lines
            counts["words"] += sum(length * count for length, count in lengths.items())
            histogram.update(lengths)
            bar.update(n_articles)
    return dict(counts, sentence_length_histogram=dict(sorted(histogram.items())))


def stats_path(output):
    """data/dump.txt -> data/dump.stats.json"""
    return Path(output).with_suffix(".stats.json")


def write_stats(stats, path):
    with atomic_write(path, "w") as f:
        json.dump(stats, f, indent=1, ensure_ascii=False)
        f.write("\n")


@reports_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", nargs="+", default=["wikimedia/wikipedia"],
                        help="HF dataset name, or local .parquet/.jsonl/.json files (the reference run's dataset)")
    parser.add_argument("--config", default="20231101.en", help="dataset config: the English dump of 2023-11-01")
    parser.add_argument("--num_articles", type=int, default=236370,
                        help="articles to sample: the reference run's count, giving ~5 M sentences")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed: fixed so a rerun takes the same articles")
    parser.add_argument("--min_words", type=int, default=3, help="drop sentences with fewer words (fragments)")
    parser.add_argument("--pack_words", type=int, default=0,
                        help="join an article's sentences into lines of up to this many words; 0: one per line")
    parser.add_argument("--output", default="data/dump.txt", help="the dump; stats go next to it as .stats.json")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count() or 1,
                        help="processes splitting sentences (default: all cores)")
    args = parser.parse_args(argv)
    for flag, value, least in (("num_articles", args.num_articles, 1), ("min_words", args.min_words, 1),
                               ("pack_words", args.pack_words, 0), ("num_proc", args.num_proc, 1)):
        if value < least:
            raise InputError(f"--{flag} must be at least {least}, got {value}")

    for path, what in ((args.output, "--output"), (stats_path(args.output), "the stats file")):
        check_writable(path, what)  # before the download and the splitting, not after them
    articles = load_articles(args.source, args.config)
    indices = sample_indices(len(articles), args.num_articles, args.seed)
    if len(indices) < args.num_articles:
        print(f"note: the source has {len(articles):,} articles, fewer than --num_articles {args.num_articles:,}: "
              "taking them all", file=sys.stderr)

    try:
        stats = extract(articles, indices, args.output, args.min_words, args.pack_words, args.num_proc)
        stats = dict(stats, articles_available=len(articles), args=vars(args))
        write_stats(stats, stats_path(args.output))
    except OSError as e:  # a folder that cannot be made, no permission, a full disk
        raise InputError(f"could not write {args.output} ({e}): pick another --output") from e
    if stats["lines"] == 0:
        print(f"warning: no sentence had --min_words {args.min_words} words; the dump is empty", file=sys.stderr)
    print(f"wrote {stats['lines']:,} lines ({stats['sentences_kept']:,} of {stats['sentences_seen']:,} sentences, "
          f"{stats['words']:,} words) from {stats['articles']:,} articles to {args.output}; "
          f"stats in {stats_path(args.output)}")


if __name__ == "__main__":
    main()
