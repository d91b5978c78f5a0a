"""Extractive question answering (SQuAD v1.1 / v2.0) on transformers' Trainer, with the flags of transformers'
run_qa.py example, and distillation from a QA teacher with upstream's run_squad_w_distillation.py flags.

    # fine-tune on SQuAD's JSON files (the official nested form, or the hub's flat records)
    python scripts/run_qa.py --model_name_or_path serialization_dir/distilbert-small-uncased \\
        --train_file train-v1.1.json --validation_file dev-v1.1.json --output_dir qa/distilbert-small-uncased
    # the hub's SQuAD 2.0, where the network is there; 3 seeds, the median reported
    python scripts/run_qa.py --model_name_or_path bert-base-uncased --dataset_name squad_v2 \\
        --version_2_with_negative --seeds 3 --save_model --output_dir qa/bert-base-uncased
    # distillation: the teacher is a QA model fine-tuned on the task (e.g. a run's --save_model)
    python scripts/run_qa.py --model_name_or_path STUDENT --train_file T --validation_file V --output_dir O \\
        --teacher_name_or_path qa/bert-base-uncased/squad/lr5e-05_seed42/model --alpha_ce 0.5 --alpha_squad 0.5

Each question and its context become windows of --max_seq_length tokens overlapping by --doc_stride; the
model learns the gold span's start and end (a window without the answer: [CLS]); predictions take the best
of --n_best_size starts and ends per window, at most --max_answer_length tokens long, and for v2.0 the
empty answer when its score beats the best span's by more than --null_score_diff_threshold. Scores are
SQuAD's official exact match and F1 (tasks/qa.py), stored as fractions like run_glue.py's metrics.

In --output_dir: results.json (the median over --seeds at the best --learning_rate_grid rate) and, per run,
squad/lr5e-05_seed42/ with results.json, predictions.json, nbest_predictions.json (and null_odds.json for
v2.0), and the model with --save_model (AutoModelForQuestionAnswering loads it, as does transformers 4.x's
question-answering pipeline; transformers 5 has none). Kept runs, resume, --overwrite_output_dir, torchrun
and the other TrainingArguments flags work as in run_glue.py.
"""

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import files
from core.errors import NON_FINITE_EXIT, InputError, NonFiniteLoss, fail, first_line, reports_errors, say
from core.files import atomic_write, check_writable
from core.loading import load_pretrained, load_tokenizer, model_input_limit
from core.precision import autocast_dtype, trainer_precision, use_attention
from tasks import qa, qa_distill
from tasks.glue_args import DEFAULTS, check_flags, decide_precision, learning_rates, parse_args
from tasks.glue_runs import (
    QA_KIND,
    Run,
    callbacks,
    execute,
    model_identity,
    model_inputs,
    plan_run,
    read_summary,
    save_model,
    seeded_sampling,
    summarize,
    train_or_restore,
    training_settings,
)

QA_DEFAULTS = {
    **DEFAULTS,
    "learning_rate": 5e-5,  # BERT paper, 4.2: SQuAD v1.1 fine-tuned 3 epochs at 5e-5, batch 32
    "per_device_eval_batch_size": 64,  # windows of 384 tokens: smaller than run_glue.py's 128
}


@dataclass
class QADataArguments:
    dataset_name: str = field(default=None, metadata={"help": "a hub dataset (squad, squad_v2), when there is network"})
    train_file: str = field(default=None, metadata={"help": "SQuAD JSON: nested (data/paragraphs/qas) or flat records"})
    validation_file: str = field(default=None, metadata={"help": "the dev questions, same forms"})
    version_2_with_negative: bool = field(
        default=False, metadata={"help": "SQuAD 2.0: some questions have no answer in their context"}
    )
    max_seq_length: int = field(default=384, metadata={"help": "tokens per window (BERT's SQuAD setting)"})
    doc_stride: int = field(default=128, metadata={"help": "tokens two windows of one context share (run_qa.py)"})
    max_query_length: int = field(default=64, metadata={"help": "question tokens kept (upstream's default)"})
    n_best_size: int = field(default=20, metadata={"help": "starts and ends considered per window, and answers kept"})
    max_answer_length: int = field(default=30, metadata={"help": "the longest answer, in tokens"})
    null_score_diff_threshold: float = field(
        default=0.0, metadata={"help": "v2.0: answer nothing when the null score beats the best span's by more"}
    )
    pad_to_max_length: bool = field(default=False, metadata={"help": "pad every batch to --max_seq_length"})
    max_train_samples: int = field(default=None, metadata={"help": "train on the first N questions only"})
    max_eval_samples: int = field(default=None, metadata={"help": "evaluate on the first N dev questions only"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "redo runs that already have results"})


def check_qa_flags(data):
    """The QA flags that the shared checks do not cover, refused before anything is read."""
    if not (data.dataset_name or (data.train_file and data.validation_file)):
        raise InputError("give --train_file and --validation_file (SQuAD JSON), or --dataset_name (squad, squad_v2)")
    if data.dataset_name and (data.train_file or data.validation_file):
        raise InputError("give --dataset_name or --train_file/--validation_file, not both")
    for flag in ("max_query_length", "n_best_size", "max_answer_length"):
        if getattr(data, flag) < 1:
            raise InputError(f"--{flag} {getattr(data, flag)}: give at least 1")
    if data.doc_stride < 0:
        raise InputError(f"--doc_stride {data.doc_stride}: give at least 0")
    if not math.isfinite(data.null_score_diff_threshold):
        raise InputError(f"--null_score_diff_threshold {data.null_score_diff_threshold}: give a finite number")
    if data.dataset_name and data.dataset_name.rstrip("/").endswith("squad_v2") and not data.version_2_with_negative:
        raise InputError("--dataset_name squad_v2 has unanswerable questions: add --version_2_with_negative")


def window_collator(collator_class, tokenizer, pad_to_max_length, max_length, half):
    """The windows' collator: each batch padded to its longest window, or with --pad_to_max_length to
    --max_seq_length (the windows' length as run); to a multiple of 8 in half precision (tensor cores)."""
    if pad_to_max_length:
        return collator_class(tokenizer, padding="max_length", max_length=max_length)
    return collator_class(tokenizer, pad_to_multiple_of=8 if half else None)


def qa_score(metrics):
    """A dev set's score in points: its F1 (the figure SQuAD's leaderboards rank by)."""
    return 100 * metrics["f1"]


def encode(tokenizer, split, data, max_length, training):
    """A split's windows: (datasets.Dataset of the model's columns, all columns as lists for post-processing)."""
    import datasets

    cols = qa.features(tokenizer, split.examples, max_length, data.doc_stride, data.max_query_length, training)
    keep = {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}
    ds = datasets.Dataset.from_dict({k: v for k, v in cols.items() if k in keep})
    return ds, cols


def fine_tune(margs, data, sweep, targs, hyper, tokenizer, train_set, dev, run, teacher=None):
    """One run: fine-tune (distil, with a teacher), predict the dev answers, score them; the results dict."""
    import torch
    import transformers
    from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

    pin = targs.dataloader_pin_memory and torch.cuda.is_available()
    args = dataclasses.replace(targs, output_dir=str(run.dir), learning_rate=run.lr, seed=run.seed,
                               dataloader_pin_memory=pin)
    transformers.set_seed(run.seed)  # the new span head's initialisation
    model = load_pretrained(AutoModelForQuestionAnswering, margs.model_name_or_path, "the model")
    use_attention(model, "cpu" if args.use_cpu or not torch.cuda.is_available() else "cuda", trainer_precision(args))
    collator = window_collator(DataCollatorWithPadding, tokenizer, data.pad_to_max_length, hyper["max_seq_length"],
                               args.fp16 or args.bf16)
    extra = ("start_positions", "end_positions", qa_distill.TEACHER_START, qa_distill.TEACHER_END)
    trainer = seeded_sampling(qa_distill.qa_trainer(teacher.args if teacher else qa_distill.QADistillArguments()))(
        model=model, args=args, train_dataset=model_inputs(train_set, model, extra),
        data_collator=qa_distill.WithTeacherSpans(collator), callbacks=callbacks())
    start = time.time()
    train_metrics = train_or_restore(trainer, run)
    train_time = time.time() - start
    dev_set, dev_cols, dev_split = dev
    dtype = autocast_dtype(args)  # evaluated as it trained
    start_logits, end_logits = qa_distill.span_logits(trainer.model, model_inputs(dev_set, model), collator,
                                                      args.per_device_eval_batch_size, args.device, dtype,
                                                      desc="dev windows", quiet=args.disable_tqdm)
    version_2 = data.version_2_with_negative
    predictions, nbest, null_odds = qa.postprocess(dev_split.examples, dev_cols, start_logits, end_logits,
                                                   data.n_best_size, data.max_answer_length, version_2,
                                                   data.null_score_diff_threshold)
    metrics = {"dev": qa.squad_metrics(dev_split.examples, predictions, version_2)}
    result = {
        "task": hyper["task"], "title": hyper["task"], "metrics": metrics, "score": qa_score(metrics["dev"]),
        "model": margs.model_label, "model_path": margs.model_name_or_path, "seed": run.seed,
        "learning_rate": run.lr, "hyper_parameters": hyper, "precision": trainer_precision(targs),
        "teacher": teacher.record | {"logits_seconds": teacher.seconds} if teacher else None,
        "steps": trainer.state.global_step, "train_seconds": round(train_time, 1),
        "train_samples_per_second": train_metrics.get("train_samples_per_second"), "device": str(args.device),
        "data": {"train": hyper["train_source"], "dev": dev_split.source},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if trainer.is_world_process_zero():
        if sweep.save_model:
            hub = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}.get(hyper["task"])
            dataset = (dev_split.source, hub or dev_split.source, None)
            save_model(trainer, tokenizer, run.dir / "model", result, "question-answering", dataset,
                       "scripts/run_qa.py")
        outputs = {"predictions.json": predictions, "nbest_predictions.json": nbest}
        if version_2:
            outputs["null_odds.json"] = null_odds
        for name, obj in outputs.items():
            with atomic_write(run.dir / name, "w") as f:
                json.dump(obj, f, indent=2)
        with atomic_write(run.dir / "results.json", "w") as f:  # last: the run's commit point
            json.dump(result, f, indent=2)
        for checkpoint in run.dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
    return result


@dataclass
class QATeacher:
    args: qa_distill.QADistillArguments
    model: object
    identity: dict
    seconds: float = None

    @property
    def record(self):
        return {"path": self.args.teacher_name_or_path, **qa_distill.settings(self.args, self.identity)}


@reports_errors
def main(argv=None):
    classes = (QADataArguments, qa_distill.QADistillArguments)
    margs, data, sweep, dargs, targs, argv = parse_args(argv, __doc__.split("\n\n")[0], classes, QA_DEFAULTS,
                                                        "run_qa.py")
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()  # the new span head's "newly initialized" warning is expected
    check_flags(data, sweep, targs)
    check_qa_flags(data)
    qa_distill.check_flags(dargs, argv)
    rates = learning_rates(sweep, targs)
    decision, targs = decide_precision(targs)
    out_dir = Path(targs.output_dir)
    results_path = out_dir / "results.json"
    check_writable(out_dir, "--output_dir", folder=True)
    check_writable(results_path, "results")
    config = load_pretrained(transformers.AutoConfig, margs.model_name_or_path, "the model")
    tokenizer = load_tokenizer(AutoTokenizer, margs.tokenizer_name or margs.model_name_or_path)
    if not tokenizer.is_fast:  # the answers' character offsets come from the Rust tokenizers
        raise InputError(f"the tokenizer of {margs.model_name_or_path} is not a fast tokenizer: QA needs its "
                         "character offsets (give --tokenizer_name with a tokenizer.json)")
    identity = model_identity(margs.model_name_or_path, config, tokenizer)
    # the windows are read by the student and, when distilling, by the teacher: the shorter limit of the two
    configs = (config,) + ((load_pretrained(transformers.AutoConfig, dargs.teacher_name_or_path, "the teacher"),)
                           if dargs.on else ())
    max_length = min(data.max_seq_length, model_input_limit(tokenizer, *configs))
    if max_length < data.max_seq_length:
        who = "the model or its teacher takes" if dargs.on else "the model takes"
        say(f"--max_seq_length {data.max_seq_length} is more than {who}: {max_length}")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    room = max_length - data.max_query_length - specials
    if room < 1:
        raise InputError(f"--max_query_length {data.max_query_length} leaves no room for the context in windows of "
                         f"{max_length} tokens (--max_seq_length, with {specials} special tokens): give less than "
                         f"{max_length - specials}")
    if data.doc_stride >= room:
        raise InputError(f"--doc_stride {data.doc_stride} leaves no new context per window: with "
                         f"--max_seq_length {max_length} and --max_query_length {data.max_query_length}, give "
                         f"less than {room}")
    version_2 = data.version_2_with_negative
    train = qa.load_split(data.train_file or data.dataset_name, "train", version_2, True, data.max_train_samples)
    dev = qa.load_split(data.validation_file or data.dataset_name, "validation", version_2, False,
                        data.max_eval_samples)
    say(f"SQuAD {'2.0' if version_2 else '1.1'}: train {len(train):,} questions ({train.source}), dev {len(dev):,} "
        f"({dev.source})")
    teacher = None
    if dargs.on:
        texts = [t for e in train.examples[:64] for t in (e.question, e.context)]
        model, t_tokenizer = qa_distill.load_teacher(dargs.teacher_name_or_path, tokenizer, texts)
        teacher = QATeacher(dargs, model, model_identity(dargs.teacher_name_or_path, model.config, t_tokenizer))
    margs.model_label = margs.model_label or Path(margs.model_name_or_path.rstrip("/")).name
    task = "squad_v2" if version_2 else "squad"
    hyper = {
        **identity, **training_settings(targs), "task": task, "max_seq_length": max_length,
        "doc_stride": data.doc_stride, "max_query_length": data.max_query_length,
        "pad_to_max_length": data.pad_to_max_length, "n_best_size": data.n_best_size,
        "max_answer_length": data.max_answer_length, "null_score_diff_threshold": data.null_score_diff_threshold,
        "train_examples": len(train), "eval_examples": len(dev), "train_data": train.digest, "eval_data": dev.digest,
        "train_source": train.source,
        "distillation": qa_distill.settings(dargs, teacher.identity) if teacher else None,
    }

    lock = (files.folder_lock(out_dir / ".lock", f"--output_dir {out_dir}") if targs.process_index == 0
            else contextlib.nullcontext())
    with lock:
        overwrite = data.overwrite_output_dir
        summary = {"model": margs.model_label, "model_path": margs.model_name_or_path, "model_identity": identity,
                   "precision": {"asked": decision.requested, "ran": decision.used},
                   "teacher": teacher.record if teacher else None,
                   "tasks": read_summary(results_path, margs.model_name_or_path, identity, overwrite)}
        seeds = [targs.seed + i for i in range(sweep.seeds)]
        with targs.main_process_first(local=False, desc="planning"):
            outputs = ("model",) if sweep.save_model else ()
            runs = [plan_run(Run(lr, seed, out_dir / task / f"lr{lr:g}_seed{seed}"), hyper, overwrite,
                             targs.process_index == 0, outputs) for lr in rates for seed in seeds]
        results, encoded = [], None
        for run in runs:
            title = f"{task} lr {run.lr:g} seed {run.seed}"
            if run.kept:
                results.append(run.kept)
                say(f"{title}: kept {run.dir / 'results.json'} ({run.kept['score']:.2f})")
                continue
            if encoded is None:  # the windows, and the teacher's logits, once for every run
                train_set, _ = encode(tokenizer, train, data, max_length, True)
                dev_set, dev_cols = encode(tokenizer, dev, data, max_length, False)
                say(f"{len(train_set):,} training windows, {len(dev_set):,} dev windows")
                if teacher:
                    start = time.time()
                    train_set = qa_distill.with_teacher_logits(teacher.model, teacher.identity, train_set, tokenizer,
                                                               targs, dargs.teacher_logits_cache)
                    teacher.seconds = round(time.time() - start, 2)
                encoded = train_set, (dev_set, dev_cols, dev)
            say(f"{title}: fine-tuning {margs.model_label} -> {run.dir}")
            try:
                result = execute(run, targs, overwrite, hyper, lambda run=run: fine_tune(
                    margs, data, sweep, targs, hyper, tokenizer, encoded[0], encoded[1], run, teacher))
            except NonFiniteLoss as e:
                fail("run_qa.py", f"{title}: {e}: the run is not recorded (lower --learning_rate, or check the data)",
                     NON_FINITE_EXIT)
            m = result["metrics"]["dev"]
            say(f"{title}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in m.items())
                + f" ({result['train_seconds']:.0f} s of training)")
            results.append(result)
        summary["tasks"][task] = summarize(SimpleTask(task), results, qa_score) | {"kind": QA_KIND}
        if targs.process_index == 0:
            with atomic_write(results_path, "w") as f:
                json.dump(summary, f, indent=2)
        shown = ", ".join(f"{k} {100 * v:.2f}" for k, v in summary["tasks"][task]["metrics"]["dev"].items())
        say(f"{task} (median of {len(seeds)} seed{'s' if len(seeds) > 1 else ''}): {shown}")
        say(f"results: {results_path}")
        return 0


@dataclass
class SimpleTask:
    name: str

    @property
    def title(self):
        return {"squad": "SQuAD v1.1", "squad_v2": "SQuAD v2.0"}.get(self.name, self.name)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("run_qa.py: interrupted; rerun the same command to resume")
    except OSError as e:
        fail("run_qa.py", first_line(e))
