"""Step 7: evaluate masked-LM models on held-out binarized data: loss, perplexity, top-1/top-5 on masked tokens.

    python scripts/evaluate.py --teacher bert-base-uncased \\
        --model serialization_dir/distilbert-small-uncased --model serialization_dir/distilbert-base-uncased \\
        --data_file data/binarized_text.bert-base-uncased.valid.pickle \\
        --token_counts data/token_counts.bert-base-uncased.pickle --output eval.json

The held-out file comes from `scripts/binarized_data.py --valid_size N`. Every model sees exactly the same
masked positions: the sequences are masked once, by the Distiller's own masking (15% of the tokens, rarer
ones more often as in training, 80/10/10 [MASK]/keep/random) with a fixed --seed. Each model (a run
folder of train.py, or any hub name or folder `AutoModelForMaskedLM` loads) gets its MLM loss (nats),
perplexity, and top-1 / top-5 accuracy on the masked tokens; with --teacher, the teacher is evaluated too
and every other model also gets its top-1 agreement with the teacher and KL(teacher || model). Prints a
table and writes the figures as JSON (--output). `--model NAME=PATH` names a row. A model saved without its
masked-LM head (an encoder-only checkpoint, whose head would load as random weights) is refused.
"""

import argparse
import json
from pathlib import Path

from core import files, loading
from core.errors import InputError, reports_errors
from lm_seqs_dataset import LmSeqsDataset, SequenceSpec
from training import data_checks, data_format, evaluation, masking
from utils import init_distributed, logger

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = [  # (figure, header, format)
    ("loss", "MLM loss", "{:.3f}"),
    ("perplexity", "ppl", "{:.2f}"),
    ("top1", "top-1", "{:.2%}"),
    ("top5", "top-5", "{:.2%}"),
    ("agreement", "agree w/ teacher", "{:.2%}"),
    ("kl", "KL to teacher", "{:.3f}"),
]


def named(spec):
    """'NAME=PATH' -> (NAME, PATH); 'PATH' -> (its last component, PATH)."""
    name, path = loading.split_name(spec)
    return name or Path(path.rstrip("/")).name or path, path


def load_model(name, path, device):
    return loading.load_masked_lm(name, path).to(device)  # a model without its head is refused, not scored


def load_tokenizer(path):
    from transformers import AutoTokenizer

    return loading.load_tokenizer(AutoTokenizer, path)


def check_not_training_data(data_file, data, counts_file):
    """The held-out file must share no sequence with the training data, which its token counts name."""
    _, meta = data_format.load_token_counts(counts_file)
    train_file = meta.get("data_file")
    if train_file and Path(train_file).resolve() != Path(data_file).resolve() and Path(train_file).is_file():
        data_checks.check_held_out(train_file, data_format.load_binarized(train_file), data_file, data)


def held_out(args, tokenizer, data, model, device):
    """(Masking, dataset): the held-out sequences as train.py reads them, and training's masking (its
    token probabilities, [MASK] id and rates) on `device`. Nothing is trained or written."""
    special = data_format.special_token_ids(tokenizer)
    data_checks.check_data_fits(args.data_file, data, data.meta, tokenizer, special)
    probs = masking.load_token_probs(args.token_counts, len(tokenizer), special.values(), args.mlm_smoothing,
                                     data_format.vocab_digest(tokenizer))
    check_not_training_data(args.data_file, data, args.token_counts)
    limit = loading.model_input_limit(tokenizer, model.config)
    dataset = LmSeqsDataset(SequenceSpec(special, limit), data)
    if len(dataset) == 0:
        raise InputError(f"{args.data_file} has no sequence of 12 tokens or more")
    mask = masking.Masking(probs, dataset.spec.mask_id, model.config.vocab_size, args.mlm_mask_prop,
                           args.word_mask, args.word_keep, device)
    return mask, dataset


def table(results, teacher=None):
    cols = [c for c in COLUMNS if any(c[0] in r for r in results.values())]
    rows = [["model", *(h for _, h, _ in cols)]]
    for name, r in results.items():
        label = f"{name} (teacher)" if name == teacher else name
        rows.append([label, *(fmt.format(r[k]) if k in r else "-" for k, _, fmt in cols)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = [line(row) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], help="[NAME=]PATH of a masked LM; repeat for several")
    p.add_argument("--teacher", default=None, help="[NAME=]PATH: evaluated too; the others are compared with it")
    p.add_argument("--data_file", required=True, help="held-out binarized text (binarized_data.py --valid_size)")
    p.add_argument("--token_counts", required=True, help="token counts of the training data (masking weights)")
    p.add_argument("--tokenizer_name", default=None, help="tokenizer (default: the first model's folder)")
    p.add_argument("--output", default="evaluation.json", help="JSON file for the figures")
    p.add_argument("--batch_size", type=int, default=evaluation.EVAL_BATCH_SIZE, help="sequences per batch")
    p.add_argument("--seed", type=int, default=evaluation.EVAL_SEED, help="fixes the masked positions")
    p.add_argument("--max_sequences", type=int, default=None, help="evaluate on the first N sequences only")
    masking.add_flags(p.add_argument)  # as in training: --mlm_mask_prop, --word_mask/keep/rand, --mlm_smoothing
    p.add_argument("--n_gpu", type=int, default=1, help="0 forces the CPU")
    args = p.parse_args(argv)

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    masking.check_flags(args)
    specs = ([args.teacher] if args.teacher else []) + args.model
    if not specs:
        raise InputError("give at least one --model (or --teacher)")
    models = dict(named(s) for s in specs)
    if len(models) != len(specs):
        raise InputError("two models have the same name: name them with --model NAME=PATH")
    teacher = named(args.teacher)[0] if args.teacher else None
    for f in (args.data_file, args.token_counts):
        if not Path(f).is_file():
            raise InputError(f"{f} does not exist")
    files.check_writable(args.output, "--output")  # before the models run, not after
    device = init_distributed(args.n_gpu).device
    data = data_format.load_binarized(args.data_file)
    if args.max_sequences is not None:
        data = data.head(args.max_sequences)
    loaded = {name: load_model(name, path, device) for name, path in models.items()}
    tokenizer = load_tokenizer(args.tokenizer_name or next(iter(models.values())))
    vocab = {name: m.config.vocab_size for name, m in loaded.items()}
    if len(set(vocab.values())) != 1 or len(tokenizer) > min(vocab.values()):
        raise InputError(f"the models and the tokenizer ({len(tokenizer)} ids) disagree on the vocabulary: {vocab}")
    first = next(iter(loaded.values()))
    mask, dataset = held_out(args, tokenizer, data, first, device)
    batches = evaluation.masked_batches(mask, dataset, args.batch_size, args.seed)
    results = evaluation.evaluate(loaded, batches, reference=teacher, progress=True)

    n = next(iter(results.values()))["masked_tokens"]
    print(f"{len(dataset):,} held-out sequences of {args.data_file}, {n:,} masked tokens (seed {args.seed})")
    print(table(results, teacher))
    out = {
        "data_file": str(args.data_file),
        "sequences": len(dataset),
        "seed": args.seed,
        "teacher": teacher,
        "models": {name: {"path": str(models[name]), **r} for name, r in results.items()},
    }
    try:
        with files.atomic_write(args.output, "w") as f:
            f.write(json.dumps(out, indent=2) + "\n")
    except OSError as e:  # a full disk, a folder that vanished during the run
        raise InputError(f"could not write {args.output} ({e.strerror or e})") from e
    logger.info(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
