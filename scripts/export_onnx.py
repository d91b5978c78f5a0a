"""Export a trained model to ONNX, checked against PyTorch before anything is kept.

    python scripts/export_onnx.py --model_name_or_path glue/sst2/lr2e-05_seed42/model --output_dir onnx/sst2 \\
        --quantize int8 --task_name sst2 --data_dir ../shared/data/glue/SST-2
    python scripts/export_onnx.py --model_name_or_path qa/squad/lr3e-05_seed42/model --output_dir onnx/qa \\
        --validation_file dev.json
    python scripts/export_onnx.py --model_name_or_path serialization_dir/my_run --output_dir onnx/student

Takes a sequence classifier (run_glue.py --save_model), a question-answering model (run_qa.py --save_model) or
a masked-LM student (a finished train.py run folder), of any type the project trains (BERT, DistilBERT,
RoBERTa, MPNet, GPT-2). Writes OUT/model.onnx (dynamic batch and sequence axes, ONNX Runtime's fused
attention, LayerNorm and GELU where its optimizer knows the model type), with --quantize int8 also
OUT/model.int8.onnx (dynamic quantization), and beside them the tokenizer, config.json and export.json (what
was checked, and the scores). The folder loads on its own: docs/deploy.md serves it in a few lines.

Kept only if the ONNX model's outputs match PyTorch's on real sentences (the dev set's, --sample_file's, or a
built-in few) within --tolerance; otherwise nothing is written and the command fails with the difference. With
a dev set (--task_name/--data_dir or --validation_file) the exported models are scored on it through ONNX
Runtime with run_glue.py's / run_qa.py's own metric code.
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from core import deploy
from core.errors import InputError, fail, finite_float, reports_errors
from core.files import folder_lock
from core.loading import check_model_folder, load_pretrained, load_tokenizer
from core.run_folder import Replacement
from tasks import glue, qa

# A few real English sentences to compare the runtimes on when no data is given (parity needs text, not labels).
SENTENCES = [
    "the film is a charming and often affecting journey.",
    "it 's a bad sign when you 're rooting for the film to end.",
    "Paris is the capital and most populous city of France.",
    "The committee approved the budget after a long debate on Tuesday.",
    "A quiet, thoughtful drama that never quite finds its footing.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "He scored twice in the second half to win the match.",
    "the performances are uniformly excellent , but the script lets them down .",
]
QUESTIONS = [
    ("What is the capital of France?", SENTENCES[2]),
    ("When did the committee approve the budget?", SENTENCES[3]),
    ("What does photosynthesis convert light energy into?", SENTENCES[5]),
    ("When did he score twice?", SENTENCES[6]),
]
MODEL_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
}


def positive(text):
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def parse_args(argv):
    p = argparse.ArgumentParser(prog="export_onnx.py", description=__doc__.split("\n")[0])
    p.add_argument("--model_name_or_path", required=True, help="a saved model folder (run_glue/run_qa --save_model, "
                   "or a finished train.py run)")
    p.add_argument("--output_dir", required=True, help="where model.onnx and the files beside it go")
    p.add_argument("--quantize", choices=["int8"], default=None, help="also write model.int8.onnx (dynamic int8)")
    p.add_argument("--per_channel", action="store_true", help="int8 with a scale per weight column, not per "
                   "matrix: kept the 12-layer MPNet teacher within 0.23 points of fp32 on SST-2 (per matrix: 1.49), "
                   "at some speed (docs/deploy.md)")
    p.add_argument("--tolerance", type=positive, default=deploy.TOLERANCE,
                   help="the largest |ONNX - PyTorch| on the fp32 outputs an export may show (default: 1e-4)")
    p.add_argument("--task_name", default=None, help="a GLUE task: its dev set scores the export (with --data_dir)")
    p.add_argument("--data_dir", default=None, help="the GLUE task's folder (GLUE's TSV files or the hub's parquet)")
    p.add_argument("--validation_file", default=None, help="a dev file instead: SQuAD JSON for a QA model; for a "
                   "classifier a CSV/TSV/JSON file as run_glue.py reads it")
    p.add_argument("--version_2_with_negative", action="store_true", help="QA: the dev file is SQuAD v2.0")
    p.add_argument("--sample_file", default=None, help="texts to compare the runtimes on, one per line (a tab "
                   "separates a pair: sentence pairs, or question and context)")
    p.add_argument("--max_samples", type=int, default=256, help="rows of the dev set or sample file compared")
    p.add_argument("--max_eval_samples", type=int, default=None, help="score on the first N dev rows only")
    p.add_argument("--max_seq_length", type=int, default=None, help="tokens per row (default 128, as run_glue.py) "
                   "or per QA window (default 384, as run_qa.py)")
    p.add_argument("--doc_stride", type=int, default=128, help="QA: tokens shared by a context's windows")
    p.add_argument("--max_query_length", type=int, default=64, help="QA: question tokens kept")
    p.add_argument("--no_optimize", action="store_true", help="keep the plain export (no fused operators)")
    p.add_argument("--overwrite_output_dir", action="store_true", help="replace an export already there (the old "
                   "one comes back if this one fails)")
    args = p.parse_args(argv)
    for name in ("max_samples", "max_seq_length", "max_query_length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name} {getattr(args, name)}: give at least 1")
    if args.doc_stride < 0:
        raise InputError(f"--doc_stride {args.doc_stride}: give at least 0")
    if args.max_eval_samples is not None and args.max_eval_samples < 1:
        raise InputError(f"--max_eval_samples {args.max_eval_samples}: give at least 1")
    if args.data_dir and not args.task_name:
        raise InputError("--data_dir needs --task_name (the GLUE task whose files are there)")
    if args.per_channel and not args.quantize:
        raise InputError("--per_channel is a way to --quantize int8: give both")
    if args.task_name and args.validation_file:
        raise InputError("give --task_name with --data_dir, or --validation_file, not both")
    return args


def read_samples(path):
    """[firsts] or [firsts, seconds] from a text file: one row per line, a tab between the two texts of a pair."""
    lines = [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise InputError(f"--sample_file {path}: no text in it")
    fields = {line.count("\t") for line in lines}
    if len(fields) > 1 or fields - {0, 1}:
        raise InputError(f"--sample_file {path}: give one text, or two separated by one tab, on every line")
    return [list(col) for col in zip(*(line.split("\t") for line in lines))]


def dev_data(args, head, tokenizer):
    """(dev set or None, texts to compare the runtimes on). The dev set: ("glue", task, split) or ("qa", data)."""
    if head.kind == "masked-lm" and (args.task_name or args.validation_file):
        raise InputError("a masked LM has no task to score: leave out --task_name and --validation_file")
    dev = None
    if head.kind == "question-answering" and args.task_name:
        raise InputError("a QA model is scored on --validation_file (SQuAD JSON), not on a GLUE --task_name")
    if head.kind == "question-answering" and args.validation_file:
        data = qa.load_split(args.validation_file, "validation", args.version_2_with_negative, False,
                             args.max_eval_samples)
        dev = ("qa", data)
    elif head.kind == "sequence-classification" and (args.task_name or args.validation_file):
        files = (args.validation_file, args.validation_file) if args.validation_file else (None, None)
        data = glue.load_task(args.task_name, args.data_dir, *files)
        split = next(iter(data.dev.values())).head(args.max_eval_samples)
        dev = ("glue", data.task, split)
    if args.sample_file:
        texts = read_samples(args.sample_file)
    elif dev and dev[0] == "qa":
        texts = [[e.question for e in dev[1].examples], [e.context for e in dev[1].examples]]
    elif dev:
        texts = dev[2].texts
    elif head.kind == "question-answering":
        texts = [list(col) for col in zip(*QUESTIONS)]
    else:
        texts = [SENTENCES]
    return dev, [t[: args.max_samples] for t in texts]


def score_glue(sess, tokenizer, names, task, split, max_length):
    out, _ = deploy.run_onnx(sess, tokenizer, split.texts, names, max_length)
    logits = np.stack(out["logits"])
    predictions = logits[:, 0] if task.labels is None else logits.argmax(-1)
    metrics = glue.compute_metrics(task, predictions, split.labels)
    return {"metrics": metrics, "score": glue.task_score(metrics), "rows": len(split)}


def score_qa(sess, tokenizer, names, data, args):
    try:
        cols = qa.features(tokenizer, data.examples, args.max_seq_length, args.doc_stride, args.max_query_length,
                           training=False)
    except ValueError as e:  # the tokenizer's own check: a window too short for its question and stride
        raise InputError(f"--max_seq_length {args.max_seq_length} leaves no room for a question of up to "
                         f"--max_query_length {args.max_query_length} tokens and a --doc_stride of {args.doc_stride} "
                         f"({str(e).splitlines()[0]})") from None
    starts, ends = [], []
    for rows in deploy.batches(len(cols["input_ids"]), 32):
        width = max(len(cols["input_ids"][i]) for i in rows)
        feed = {n: np.array([list(cols[n][i]) + [0] * (width - len(cols[n][i])) for i in rows], dtype=np.int64)
                for n in names}
        if "input_ids" in feed and tokenizer.pad_token_id:
            for k, i in enumerate(rows):
                feed["input_ids"][k, len(cols["input_ids"][i]):] = tokenizer.pad_token_id
        s, e = sess.run(None, feed)
        starts.extend(s)
        ends.extend(e)
    predictions, _, _ = qa.postprocess(data.examples, cols, starts, ends, version_2=args.version_2_with_negative)
    metrics = qa.squad_metrics(data.examples, predictions, args.version_2_with_negative)
    return {"metrics": metrics, "score": 100 * metrics["f1"], "rows": len(data.examples)}


def score(sess, tokenizer, names, dev, args):
    if dev[0] == "qa":
        return score_qa(sess, tokenizer, names, dev[1], args)
    return score_glue(sess, tokenizer, names, dev[1], dev[2], args.max_seq_length)


def build(args, staging, say):
    """Everything into `staging`; InputError (nothing kept) on a failed check. Returns export.json's record."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    folder = args.model_name_or_path
    check_model_folder("the model", folder)
    config = load_pretrained(AutoConfig, folder, "the model")
    head = deploy.head_of(config)
    tokenizer = load_tokenizer(AutoTokenizer, folder)
    model_class = getattr(transformers, MODEL_CLASSES[head.kind])
    model = load_pretrained(model_class, folder, "the model", attn_implementation="eager").float().eval()
    if args.max_seq_length is None:
        args.max_seq_length = 384 if head.kind == "question-answering" else 128
    dev, texts = dev_data(args, head, tokenizer)

    say(f"export_onnx.py: exporting {type(model).__name__} ({config.model_type}) from {folder}")
    start = time.perf_counter()
    raw = staging / "model.plain.onnx"
    names = deploy.export(model, tokenizer, raw, args.max_seq_length)
    fused = None
    if args.no_optimize:
        optimized, fused = False, "--no_optimize"
    else:
        optimized, fused = deploy.optimize(raw, staging / "model.onnx", config)
    if optimized:
        raw.unlink()
    else:
        raw.rename(staging / "model.onnx")
        say(f"export_onnx.py: unoptimized ({fused})")
    export_seconds = time.perf_counter() - start

    sess = deploy.session(staging / "model.onnx")
    got, masks = deploy.run_onnx(sess, tokenizer, texts, names, args.max_seq_length)
    ref = deploy.run_torch(model, tokenizer, texts, names, head.outputs, args.max_seq_length)
    diff = deploy.largest_difference(got, ref, masks, head.token_level)
    rows = len(texts[0])
    say(f"export_onnx.py: ONNX against PyTorch on {rows} rows: largest difference {diff:.2e} (tolerance "
        f"{args.tolerance:g})")
    if not math.isfinite(diff) or diff > args.tolerance:
        raise ExportRefused(f"the ONNX model's outputs differ from PyTorch's by {diff:.3g} on {rows} rows, over "
                            f"--tolerance {args.tolerance:g}: nothing was written")
    record = {
        "source": str(folder), "model_type": config.model_type, "architecture": type(model).__name__,
        "head": head.kind, "inputs": names, "outputs": list(head.outputs), "opset": deploy.OPSET,
        "optimized": optimized, "fused_operators": fused if optimized else None,
        "unoptimized_because": None if optimized else fused, "export_seconds": round(export_seconds, 2),
        "parity": {"rows": rows, "largest_difference": diff, "tolerance": args.tolerance},
        "files": {"fp32": "model.onnx"}, "command": "python scripts/export_onnx.py " + " ".join(sys.argv[1:]),
    }
    if dev:
        record["dev"] = {"fp32": score(sess, tokenizer, names, dev, args)}
        say(f"export_onnx.py: dev {record['dev']['fp32']['score']:.2f} (ONNX fp32, {record['dev']['fp32']['rows']} "
            "rows)")
    if args.quantize:
        deploy.quantize_int8(staging / "model.onnx", staging / "model.int8.onnx", args.per_channel)
        sess8 = deploy.session(staging / "model.int8.onnx")
        got8, _ = deploy.run_onnx(sess8, tokenizer, texts, names, args.max_seq_length)
        agreement = deploy.argmax_agreement(got8, got, masks, head.token_level)
        record["files"]["int8"] = "model.int8.onnx"
        record["int8"] = {"per_channel": args.per_channel, "argmax_agreement_with_fp32": agreement, "rows": rows,
                          "largest_difference_from_fp32": deploy.largest_difference(got8, got, masks,
                                                                                    head.token_level)}
        say(f"export_onnx.py: int8 agrees with fp32 on {100 * agreement:.1f}% of predictions ({rows} rows)")
        if dev:
            record["dev"]["int8"] = score(sess8, tokenizer, names, dev, args)
            lost = record["dev"]["fp32"]["score"] - record["dev"]["int8"]["score"]
            record["int8"]["dev_points_lost"] = lost
            say(f"export_onnx.py: dev {record['dev']['int8']['score']:.2f} (ONNX int8: {lost:+.2f} points lost)")
    record["sizes_bytes"] = {p.name: p.stat().st_size for p in sorted(staging.glob("*.onnx"))}
    tokenizer.save_pretrained(str(staging))
    config.save_pretrained(str(staging))
    (staging / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


class ExportRefused(Exception):
    """The export ran but failed its check: nothing is kept, and the exit status is 1 (not bad input)."""


def is_export(folder):
    return (Path(folder) / "export.json").is_file()


@reports_errors
def main(argv=None):
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    args = parse_args(argv)
    out = Path(args.output_dir)
    say = print
    replacing = Replacement(out, is_export, "finished", "--overwrite_output_dir")
    lock = out.parent / f".{out.name}.lock"
    out.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(lock, f"the export folder {out}"):
        if (note := replacing.recover()) is not None:
            say(f"export_onnx.py: {note}")
        if out.exists() and any(out.iterdir()) and not args.overwrite_output_dir:
            what = "another export" if is_export(out) else "other files"
            raise InputError(f"--output_dir {out} holds {what}: give --overwrite_output_dir to replace it, or "
                             "another folder")
        staging = out.parent / f".{out.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            record = build(args, staging, say)
            if out.exists():
                replacing.begin()
            staging.rename(out)
            replacing.commit()
        except ExportRefused as e:
            shutil.rmtree(staging, ignore_errors=True)
            fail("export_onnx.py", e, status=1)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if replacing.begun and not out.exists():
                replacing.rollback()
    sizes = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in record["sizes_bytes"].items())
    say(f"export_onnx.py: wrote {out} ({sizes})")
    return record


if __name__ == "__main__":
    main()
