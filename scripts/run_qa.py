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

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, reports_errors, say
from core.flags import option
from tasks import qa, qa_distill, runs
from tasks.arguments import DEFAULTS, check_flags, parse_args
from tasks.qa_family import QAFamily
from tasks.runner import Job, open_command, run_jobs, run_script

QA_DEFAULTS = {
    **DEFAULTS,
    "learning_rate": 5e-5,  # BERT paper, 4.2: SQuAD v1.1 fine-tuned 3 epochs at 5e-5, batch 32
    "per_device_eval_batch_size": 64,  # windows of 384 tokens: smaller than run_glue.py's 128
}


@dataclass
class QADataArguments:
    dataset_name: str = option(None, "a hub dataset (squad, squad_v2), when there is network")
    train_file: str = option(None, "SQuAD JSON: nested (data/paragraphs/qas) or flat records")
    validation_file: str = option(None, "the dev questions, same forms")
    version_2_with_negative: bool = option(False, "SQuAD 2.0: some questions have no answer in their context")
    max_seq_length: int = option(384, "tokens per window (BERT's SQuAD setting)")
    doc_stride: int = option(128, "tokens two windows of one context share (run_qa.py)")
    max_query_length: int = option(64, "question tokens kept (upstream's default)")
    n_best_size: int = option(20, "starts and ends considered per window, and answers kept")
    max_answer_length: int = option(30, "the longest answer, in tokens")
    null_score_diff_threshold: float = option(0.0, "v2.0: answer nothing when the null score beats the best span's by "
                                                   "more")
    pad_to_max_length: bool = option(False, "pad every batch to --max_seq_length")
    max_train_samples: int = option(None, "train on the first N questions only")
    max_eval_samples: int = option(None, "evaluate on the first N dev questions only")
    overwrite_output_dir: bool = option(False, "redo runs that already have results")


def check_qa_flags(data_args):
    """The QA flags that the shared checks do not cover, refused before anything is read."""
    if not (data_args.dataset_name or (data_args.train_file and data_args.validation_file)):
        raise InputError("give --train_file and --validation_file (SQuAD JSON), or --dataset_name (squad, squad_v2)")
    if data_args.dataset_name and (data_args.train_file or data_args.validation_file):
        raise InputError("give --dataset_name or --train_file/--validation_file, not both")
    for flag in ("max_query_length", "n_best_size", "max_answer_length"):
        if getattr(data_args, flag) < 1:
            raise InputError(f"--{flag} {getattr(data_args, flag)}: give at least 1")
    if data_args.doc_stride < 0:
        raise InputError(f"--doc_stride {data_args.doc_stride}: give at least 0")
    if not math.isfinite(data_args.null_score_diff_threshold):
        raise InputError(f"--null_score_diff_threshold {data_args.null_score_diff_threshold}: give a finite number")
    v2_hub = data_args.dataset_name and data_args.dataset_name.rstrip("/").endswith("squad_v2")
    if v2_hub and not data_args.version_2_with_negative:
        raise InputError("--dataset_name squad_v2 has unanswerable questions: add --version_2_with_negative")


@reports_errors
def main(argv=None):
    classes = (QADataArguments, qa_distill.QADistillArguments)
    model_args, data_args, sweep, distill_args, training_args, argv = parse_args(
        argv, __doc__.split("\n\n")[0], classes, QA_DEFAULTS, "run_qa.py")
    import transformers

    transformers.logging.set_verbosity_error()  # the new span head's "newly initialized" warning is expected
    check_flags(data_args, sweep, training_args)
    check_qa_flags(data_args)
    distill_args.check(argv, training_args)
    family = QAFamily(data_args)
    cmd, rates, max_length = open_command(family, model_args, data_args, sweep, distill_args, training_args)
    if not cmd.tokenizer.is_fast:  # the answers' character offsets come from the Rust tokenizers
        raise InputError(f"the tokenizer of {model_args.model_name_or_path} is not a fast tokenizer: QA needs its "
                         "character offsets (give --tokenizer_name with a tokenizer.json)")
    specials = cmd.tokenizer.num_special_tokens_to_add(pair=True)
    room = max_length - data_args.max_query_length - specials
    if room < 1:
        raise InputError(f"--max_query_length {data_args.max_query_length} leaves no room for the context in windows "
                         f"of {max_length} tokens (--max_seq_length, with {specials} special tokens): give less than "
                         f"{max_length - specials}")
    if data_args.doc_stride >= room:
        raise InputError(f"--doc_stride {data_args.doc_stride} leaves no new context per window: with "
                         f"--max_seq_length {max_length} and --max_query_length {data_args.max_query_length}, give "
                         f"less than {room}")
    version_2 = data_args.version_2_with_negative
    train = qa.load_split(data_args.train_file or data_args.dataset_name, "train", version_2, True,
                          data_args.max_train_samples)
    dev = qa.load_split(data_args.validation_file or data_args.dataset_name, "validation", version_2, False,
                        data_args.max_eval_samples)
    transfer = None
    if distill_args.transfer_file:  # questions only the teacher answers: their answers, if any, are dropped
        transfer = qa.load_split(distill_args.transfer_file, "transfer", True, False)
        transfer.examples = [dataclasses.replace(e, answers=[]) for e in transfer.examples]
    more = f" (+ {len(transfer):,} only the teacher answers, {transfer.source})" if transfer else ""
    say(f"SQuAD {'2.0' if version_2 else '1.1'}: train {len(train):,} questions ({train.source}){more}, dev "
        f"{len(dev):,} ({dev.source})")
    if cmd.teacher:  # its start/end logits are compared token by token: it must read the student's ids
        cmd.teacher.check_tokens(cmd.tokenizer, [(e.question, e.context) for e in train.examples[:64]])
    task = "squad_v2" if version_2 else "squad"
    run_key = runs.run_key(
        cmd, max_length, task=task, doc_stride=data_args.doc_stride, max_query_length=data_args.max_query_length,
        pad_to_max_length=data_args.pad_to_max_length, n_best_size=data_args.n_best_size,
        max_answer_length=data_args.max_answer_length, null_score_diff_threshold=data_args.null_score_diff_threshold,
        train_examples=len(train), eval_examples=len(dev), train_data=train.digest, eval_data=dev.digest,
        train_source=train.source, **({"transfer_data": transfer.digest} if transfer else {}),
        **({} if cmd.teacher else {"span_loss_weight": 1.0}))  # before 2026-12-08 it was --alpha_squad's 0.5
    summary = run_jobs(cmd, [Job(task, task, (train, dev, transfer), run_key)], rates)
    shown = ", ".join(f"{k} {100 * v:.2f}" for k, v in summary["tasks"][task]["metrics"]["dev"].items())
    say(f"{task} (median of {sweep.seeds} seed{'s' if sweep.seeds > 1 else ''}): {shown}")
    say(f"results: {Path(cmd.training_args.output_dir) / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_script("run_qa.py", main)
