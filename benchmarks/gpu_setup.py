"""Data and models for benchmarks/gpu_check.sh, made offline (the GPU machine reaches no hub): a generated
corpus (`dump.txt`), a WordPiece tokenizer of bert-base-uncased's size (30,522 ids, its special tokens at
their ids) and a random-weight teacher of bert-base's shape, saved together as one model folder.

    python benchmarks/gpu_setup.py --out OUT/data [--articles 3000] [--small]

--small (the dry run on CPU) makes a 2 x 128 teacher instead of bert-base's 12 x 768. `student.json` beside
them is the student config: the recipe's 4 x 768 DistilBERT_small, or 2 x 128 with --small.
"""

import argparse
import collections
import json
import re
from pathlib import Path

from scripts import make_synthetic_wiki

VOCAB = 30522
SPECIAL = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}  # bert-base-uncased's ids
NAME = "bert-base-random"
ROOT = Path(__file__).resolve().parents[1]


def vocabulary(lines):
    """bert-base-uncased's layout: the special tokens at its ids, the corpus's words (commonest first), and
    unused entries up to 30,522."""
    counts = collections.Counter(w for line in lines for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", line.lower()))
    words = [w for w, _ in counts.most_common()]
    vocab = [SPECIAL.get(i) for i in range(104)]
    vocab = [v or f"[unused{i}]" for i, v in enumerate(vocab)]
    vocab += [w for w in words if w not in vocab][: VOCAB - len(vocab)]
    vocab += [f"[unused{i}]" for i in range(104, 104 + VOCAB - len(vocab))]
    return vocab


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for dump.txt and the model folder")
    p.add_argument("--articles", type=int, default=3000, help="synthetic articles (~8 lines each)")
    p.add_argument("--small", action="store_true", help="a 2 x 128 teacher (the dry run on CPU)")
    args = p.parse_args(argv)
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    out = Path(args.out)
    lines = [s.strip() for a in make_synthetic_wiki.generate(args.articles, seed=0)
             for s in re.split(r"\n+|(?<=\.)\s+", a["text"]) if len(s.split()) >= 8]
    # Step 8's stand-in rows, split 5 train : 1 dev so that a corpus of any size fills both files (5,000 : 1,000
    # at the full run's size)
    rows = [f"{line}\t{int('born' in line)}" for line in lines[:6000]]
    n_train = len(rows) * 5 // 6
    if n_train == 0 or n_train == len(rows):  # checked before anything is written
        p.error(f"{len(lines)} lines are too few for both a train and a dev split of the SST-2 stand-in; "
                f"raise --articles")
    out.mkdir(parents=True, exist_ok=True)
    (out / "dump.txt").write_text("\n".join(lines) + "\n")
    model_dir = out / NAME
    model_dir.mkdir(exist_ok=True)
    (model_dir / "vocab.txt").write_text("\n".join(vocabulary(lines)) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(str(model_dir), do_lower_case=True)
    assert len(tokenizer) == VOCAB, len(tokenizer)
    tokenizer.save_pretrained(str(model_dir))
    small = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512)
    shape = small if args.small else {}
    BertForMaskedLM(BertConfig(vocab_size=VOCAB, **shape)).save_pretrained(str(model_dir))
    # The student: the recipe's 4 x 768 DistilBERT_small, or for the small teacher a 2 x 128 one.
    config = json.loads((ROOT / "training_configs" / "distilbert-small-uncased.json").read_text())
    if args.small:
        config.update(dim=128, n_layers=2, n_heads=2, hidden_dim=512)
    (out / "student.json").write_text(json.dumps(config, indent=2))
    # Step 8's stand-in where GLUE's real SST-2 is not at hand: an SST-2 folder in GLUE's TSV layout whose
    # label says whether the line tells a birth year (learnable, so a working fine-tune scores above chance).
    sst2 = out / "glue" / "SST-2"
    sst2.mkdir(parents=True, exist_ok=True)
    (sst2 / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:n_train]) + "\n")
    (sst2 / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[n_train:]) + "\n")
    print(f"{len(lines):,} lines in {out / 'dump.txt'}; teacher and tokenizer ({len(tokenizer):,} ids) in {model_dir}; "
          f"a generated SST-2 in {sst2} ({n_train:,} train, {len(rows) - n_train:,} dev rows)")


if __name__ == "__main__":
    main()
