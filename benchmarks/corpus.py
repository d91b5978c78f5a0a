"""Benchmark input: English lines with Wikipedia-like lengths, generated offline.

Sentences come from the synthetic articles of scripts/make_synthetic_wiki.py, split with sentencex, and
are joined so that line lengths follow a log-normal with a median of ~22 words (mean ~25), close to
Wikipedia sentences: with bert-base-uncased that is ~40 tokens a line, near the reference run's ~37
(200M tokens / 5.36M sequences). The words are synthetic; their lengths and the tokenizer's work per
line are what matter for throughput.
"""

import random
from pathlib import Path

from sentencex import segment

from scripts import make_synthetic_wiki


def write_lines(path, n_lines, seed=0):
    """Write `n_lines` lines to `path` (skipped when the file already has them); return the path."""
    path = Path(path)
    if path.is_file() and sum(1 for _ in open(path, "rb")) == n_lines:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        line, words, target = [], 0, 0
        for article in make_synthetic_wiki.generate(10**9, seed=seed):
            for paragraph in article["text"].split("\n\n"):
                for sentence in segment("en", paragraph):
                    if not target:
                        target = max(3, round(rng.lognormvariate(3.1, 0.5)))
                    line.append(sentence.strip())
                    words += sentence.count(" ") + 1
                    if words >= target:
                        f.write(" ".join(line) + "\n")
                        written += 1
                        line, words, target = [], 0, 0
                        if written == n_lines:
                            return path
