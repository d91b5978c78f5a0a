"""The flags run_glue.py and run_qa.py share: transformers' TrainingArguments with the published fine-tuning
setup as defaults (each with its source), the model and sweep flags, and the checks that refuse a bad value
before anything is read, moved or written (as train_args.py is to train.py). Each script adds its data and
distillation flags."""

import dataclasses
import math
import os
import sys
from dataclasses import dataclass

from core.errors import InputError, first_line, say
from core.flags import option
from core.precision import Precision

# The published fine-tuning setup of BERT and DistilBERT, where transformers' defaults differ.
DEFAULTS = dict(
    per_device_train_batch_size=32,  # BERT paper (Devlin et al. 2019), A.3; DistilBERT's GLUE runs
    per_device_eval_batch_size=128,  # evaluation only: larger is faster, same result
    learning_rate=2e-5,  # the low end of BERT's grid {5, 4, 3, 2}e-5; upstream's distillation README runs 2e-5
    num_train_epochs=3,  # BERT paper, A.3
    weight_decay=0.01,  # BERT's optimizer (AdamWeightDecay, weight_decay_rate 0.01 in run_classifier.py)
    save_strategy="epoch",  # a checkpoint to resume from; removed when the run has its results
    save_total_limit=1,
    logging_steps=50,
    train_sampling_strategy="group_by_length",  # batches of similar lengths pad less
    report_to="tensorboard",
)
WARMUP = 0.1  # warmup over the first 10% of steps: BERT's run_classifier.py (warmup_proportion 0.1)
BERT_GRID = (2e-5, 3e-5, 4e-5, 5e-5)  # BERT paper, A.3


@dataclass
class ModelArguments:
    model_name_or_path: str = option(None, "a train.py run folder, a model folder, or a hub name (required)")
    tokenizer_name: str = option(None, "default: the model's own tokenizer")
    model_label: str = option(None, "the model's name in results (default: its folder)")


@dataclass
class SweepArguments:
    seeds: int = option(1, "runs per task (seeds --seed, --seed+1, ...), median reported")
    learning_rate_grid: str = option(None, "comma-separated learning rates to try, or 'bert' for BERT's "
                                           "2e-5,3e-5,4e-5,5e-5; the best median on dev is reported (default: "
                                           "--learning_rate only)")
    save_model: bool = option(False, "keep each run's fine-tuned model (TASK/RUN/model)")


def parse_args(argv, description, classes, defaults, prog):
    """(ModelArguments, the script's data flags, SweepArguments, its distillation flags, TrainingArguments,
    argv); `classes`: the script's data and distillation flags."""
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((ModelArguments, classes[0], SweepArguments, classes[1], TrainingArguments))
    parser.description = description
    parser.prog = prog  # usage errors read like every other error, also when main() is called in-process
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    versioned = {"warmup_ratio": WARMUP} if "warmup_ratio" in fields else {"warmup_steps": WARMUP}  # 4.x / 5.x
    if "train_sampling_strategy" not in fields:  # transformers 4.x
        versioned["group_by_length"] = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if not torch.cuda.is_available():  # torchrun on CPUs: accelerate wraps the model in DDP (MULTI_CPU, gloo)
            versioned.update(ddp_backend="gloo", use_cpu=True)  # only when told so: else N unsynced copies train
    parser.set_defaults(**{k: v for k, v in defaults.items() if k in fields}, **versioned)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        model_args, data_args, sweep, distill_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as e:  # unknown flags, or TrainingArguments refusing a combination
        parser.error(first_line(e))
    if not model_args.model_name_or_path:
        parser.error("--model_name_or_path is required")
    # transformers 5 puts a run without --output_dir in ./trainer_output: results must not land unasked
    if not any(a.split("=")[0] in ("--output_dir", "--output-dir") for a in argv):
        parser.error("--output_dir is required")
    return model_args, data_args, sweep, distill_args, training_args, argv


def check_flags(data_args, sweep, training_args):
    """Every flag that would fail late, or train to a result that means nothing, is refused here: before
    anything is read, moved or written."""

    def at_least(value, low, flag):
        if value is not None and value < low:
            raise InputError(f"{flag} {value}: give at least {low}")

    for flag, value in (("--per_device_train_batch_size", training_args.per_device_train_batch_size),
                        ("--per_device_eval_batch_size", training_args.per_device_eval_batch_size),
                        ("--gradient_accumulation_steps", training_args.gradient_accumulation_steps),
                        ("--max_seq_length", data_args.max_seq_length), ("--seeds", sweep.seeds),
                        ("--max_train_samples", data_args.max_train_samples),  # a negative N would drop the last N
                        ("--max_eval_samples", data_args.max_eval_samples)):
        at_least(value, 1, flag)
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise InputError(f"--max_steps {training_args.max_steps}: give a positive number of steps (or -1: by epochs)")
    warmup = getattr(training_args, "warmup_ratio", None) or training_args.warmup_steps
    for flag, value, low, high in (("--learning_rate", training_args.learning_rate, 0, None),
                                   ("--num_train_epochs", training_args.num_train_epochs, 0, None),
                                   ("--weight_decay", training_args.weight_decay, 0, None),
                                   ("--warmup_steps", warmup, 0, None),
                                   ("--max_grad_norm", training_args.max_grad_norm, 0, None),
                                   ("--adam_epsilon", training_args.adam_epsilon, 0, None),
                                   ("--adam_beta1", training_args.adam_beta1, 0, 1),
                                   ("--adam_beta2", training_args.adam_beta2, 0, 1),
                                   ("--label_smoothing_factor", training_args.label_smoothing_factor, 0, 1)):
        if not math.isfinite(value) or value < low or (high is not None and value >= high):
            span = f"in [{low}, {high})" if high is not None else f"finite and at least {low}"
            raise InputError(f"{flag} {value}: give a number {span}")
    if training_args.learning_rate == 0 or (training_args.num_train_epochs == 0 and training_args.max_steps < 0):
        which = "--learning_rate 0" if training_args.learning_rate == 0 else "--num_train_epochs 0"
        raise InputError(f"{which} would not train at all")


def decide_precision(training_args):
    """(the Precision, the TrainingArguments to run with): precision.Precision's one decision, announced (--fp16
    without CUDA, or --bf16 on a CPU without fast bf16, runs fp32 and is recorded so)."""
    decision, training_args = Precision.for_trainer(training_args)
    if decision.why:
        say(decision.why)
    return decision, training_args


def learning_rates(sweep, training_args):
    """The learning rates to try, each its own run folder (lr2e-05_seed42, ...)."""
    if not sweep.learning_rate_grid:
        return [training_args.learning_rate]
    if sweep.learning_rate_grid.strip().lower() == "bert":
        return list(BERT_GRID)
    try:
        rates = [float(x) for x in sweep.learning_rate_grid.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--learning_rate_grid {sweep.learning_rate_grid!r}: give numbers such as 2e-5,3e-5") from None
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise InputError(f"--learning_rate_grid {sweep.learning_rate_grid!r}: give positive, finite learning rates")
    names = [f"{r:g}" for r in rates]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:  # one folder trained twice, and a "median" of copies
        raise InputError(f"--learning_rate_grid {sweep.learning_rate_grid!r} gives {twice} twice")
    return rates
