"""Distil a teacher into a student (step 6 of the recipe): BERT -> DistilBERT by default.

    python train.py --dump_path serialization_dir/distilbert_small \\
        --data_file data/binarized_text.bert-base-uncased.pickle \\
        --token_counts data/token_counts.bert-base-uncased.pickle \\
        --student_type distilbert --student_config training_configs/distilbert-small-uncased.json \\
        --student_pretrained_weights serialization_dir/distilbert-small-uncased.from-bert-base-uncased.safetensors \\
        --teacher_type bert --teacher_name bert-base-uncased --mlm --fp16
    # the same, on 8 GPUs:   torchrun --nproc_per_node 8 train.py ...
    # a plain MLM, no teacher (the no-distillation baseline): --teacher_name none --tokenizer_name bert-base-uncased
    #     --alpha_ce 0 --alpha_cos 0 --alpha_mlm 1
    # the same with --student_type bert and a BertConfig JSON trains a BERT from scratch (the demo's teacher)
    # evaluate the student on held-out data every N batches and at the end (scripts/evaluate.py's figures):
    #     --valid_file data/binarized_text.bert-base-uncased.valid.pickle --eval_interval N
    # continue a killed run:  the same command with --resume

Writes into --dump_path: parameters.json, git_log.json, train.log, metrics.jsonl (one record per log
interval, and one with valid_* figures per evaluation), log/train/ (tensorboard: losses, lr, tokens/s,
memory, empty_cache calls, valid/*), checkpoint.pth (the resumable state, every --checkpoint_interval
batches and at each epoch's end), model_epoch_<n>.pth (the student's weights after each epoch), and at the
end the student in HF format (config.json + model.safetensors) with the teacher's tokenizer, so
`AutoModelForMaskedLM.from_pretrained(dump_path)` and `pipeline("fill-mask", model=dump_path)` work.

Every upstream flag is accepted (examples/research_projects/distillation/train.py); they are defined, with
their defaults, in train_args.py. Differences: --fp16
uses torch.amp (no apex; --fp16_opt_level is ignored); --bf16; the defaults are the DistilBERT recipe
(alpha_ce 5, alpha_mlm 2, alpha_cos 1, MLM for distilbert/roberta students); bad input stops with a
one-line error and exit status 2 before anything is written; a non-finite loss stops with exit status 3.
"""

import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

import data_io
import masking
import train_args
from checkpoint import CHECKPOINT
from distiller import Distiller
from errors import NON_FINITE_EXIT, InputError, NonFiniteLoss, fail, reports_errors
from lm_seqs_dataset import MIN_LEN, LmSeqsDataset
from models import load_student, model_classes
from utils import (
    git_log,
    init_distributed,
    load_lm,
    load_tokenizer as load_tokenizer_or_fail,
    logger,
    model_input_limit,
    set_seed,
)


def check_dump_path(args):
    """--resume needs a checkpoint; an existing run folder needs --force; the folder must be writable."""
    dump = Path(args.dump_path)
    if args.resume:
        if not (dump / CHECKPOINT).is_file():
            aside = replaced_path(dump)
            hint = f" (the run that was there before --force is in {aside})" if aside.exists() else ""
            raise InputError(f"--resume: no checkpoint in {dump}{hint}; start the run without --resume")
    elif dump.exists() and not args.force:
        raise InputError(f"{dump} already exists: use --force to overwrite it, or --resume to continue the run in it")
    data_io.check_writable(dump, "run folder --dump_path", folder=True)


def load_tokenizer(args, data_meta):
    name = args.tokenizer_name or (None if args.no_teacher else args.teacher_name) or data_meta.get("tokenizer_name")
    if name is None:
        raise InputError("--teacher_name none: give --tokenizer_name (the data file does not name its tokenizer)")
    _, _, tokenizer_class = model_classes(args.teacher_type)
    what = "the tokenizer" if args.tokenizer_name or args.no_teacher else "the teacher"
    return load_tokenizer_or_fail(tokenizer_class, name, what)


def load_teacher(args, student):
    _, model_class, _ = model_classes(args.teacher_type)
    teacher, no_head = load_lm(model_class, args.teacher_name, "the teacher")
    if no_head:  # an encoder-only checkpoint: from_pretrained filled the vocabulary head with random weights
        head = "masked-LM" if args.mlm else "LM"
        if args.alpha_ce > 0 or args.alpha_mse > 0:
            raise InputError(
                f"the teacher {args.teacher_name} has no {head} head (its checkpoint lacks {', '.join(no_head[:3])}"
                f"{', ...' if len(no_head) > 3 else ''}): --alpha_ce and --alpha_mse would learn from a random head; "
                f"set them to 0 and use the losses that need no head: the cosine loss --alpha_cos and the MiniLM "
                f"relation losses --alpha_att/qq/kk/vv"
            )
        logger.info(f"the teacher has no {head} head: only its hidden states and attention are used")
    s, t = student.config, teacher.config
    s_dim = getattr(s, "dim", None) or s.hidden_size
    if s.vocab_size != t.vocab_size:
        raise InputError(f"student vocab_size {s.vocab_size} differs from the teacher's {t.vocab_size}")
    if (args.alpha_cos > 0 or args.alpha_mse > 0) and s_dim != t.hidden_size:
        raise InputError(
            f"student hidden size {s_dim} differs from the teacher's {t.hidden_size}: the cosine loss compares "
            f"hidden states (set --alpha_cos 0, or match the sizes)"
        )
    return teacher


def max_input_size(args, tokenizer, student, teacher):
    limit = model_input_limit(tokenizer, student.config, *([teacher.config] if teacher is not None else []))
    if args.max_model_input_size is not None:
        if args.max_model_input_size > limit:
            raise InputError(f"--max_model_input_size {args.max_model_input_size} exceeds the models' limit {limit}")
        return args.max_model_input_size
    return limit


def lock_path(dump):
    """The lock of a run folder, beside it: --force moves the folder itself aside."""
    dump = Path(dump)
    return dump.parent / f".{dump.name}.lock"


def replaced_path(dump):
    """Where --force keeps the previous contents of `dump` until the new run's first checkpoint."""
    dump = Path(dump)
    return dump.parent / f".{dump.name}.replaced-by-force"


def prepare_dump_path(args, dist, decided):
    """Create the run folder (rank 0) once every input has been checked, and record the run.

    --force never deletes first: the old folder is moved aside (replaced_path) and deleted only when the
    new run has written its first checkpoint; a run that fails before that puts it back (ReplacedRun).
    `decided`: what the run settled beyond its flags, recorded in parameters.json beside them.
    Returns (log file handler, the folder moved aside or None)."""
    dump = Path(args.dump_path)
    aside = None
    if dist.is_master:
        if dump.exists() and args.force and not args.resume:
            aside = replaced_path(dump)
            if aside.exists() and not (dump / CHECKPOINT).exists():
                # An earlier --force run was stopped before its first checkpoint: `aside` still holds the
                # run it replaced, `dump` only that attempt.
                shutil.rmtree(dump)
            else:
                if aside.exists():  # left over from a cleanup that was interrupted: the new run had a checkpoint
                    shutil.rmtree(aside)
                dump.rename(aside)
        dump.mkdir(parents=True, exist_ok=True)
        for stale in dump.glob(".*.tmp"):  # temporary files of a checkpoint write that was killed
            stale.unlink()
        handler = logging.FileHandler(dump / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        if aside is not None:
            logger.info(f"--force: the previous {dump} is kept in {aside} until this run's first checkpoint")
        if not args.resume:
            with open(dump / "parameters.json", "w") as f:
                json.dump({**vars(args), **decided}, f, indent=4, default=str)
            git_log(dump)
    if dist.world_size > 1:
        torch.distributed.barrier()
    return (handler if dist.is_master else None), aside


class ReplacedRun:
    """--force: the previous run, moved aside by prepare_dump_path. Deleted once the new run has written its
    first checkpoint (from then on the new run can resume on its own); put back if the new run fails first."""

    def __init__(self, dump, aside):
        self.dump, self.aside, self.pending = Path(dump), aside, aside is not None

    def drop(self):  # a Distiller checkpoint callback
        if self.pending:
            shutil.rmtree(self.aside, ignore_errors=True)
            logger.info(f"--force: deleted the previous run (kept in {self.aside} until now)")
            self.pending = False

    def restore(self):
        if not self.pending or not self.aside.exists():
            return
        shutil.rmtree(self.dump, ignore_errors=True)
        self.aside.rename(self.dump)
        self.pending = False
        sys.stderr.write(f"train.py: the previous run in {self.dump} was left as it was\n")


def setup(args):
    """Load and check the data and models a run needs; write nothing. Returns (tokenizer, dataset,
    token_probs, student, teacher); raises InputError / InputError on bad input."""
    set_seed(args.seed)
    data = data_io.load_binarized(args.data_file)
    tokenizer = load_tokenizer(args, data.meta)
    special = data_io.special_token_ids(tokenizer)
    args.special_tok_ids = special
    data_io.check_data_fits(args.data_file, data, data.meta, tokenizer, special)
    token_probs = None
    if args.mlm:
        token_probs = masking.load_token_probs(args.token_counts, len(tokenizer), special.values(), args.mlm_smoothing,
                                               data_io.vocab_digest(tokenizer))  # fmt: skip

    student = load_student(args, len(tokenizer))
    teacher = None if args.no_teacher else load_teacher(args, student)
    args.max_model_input_size = max_input_size(args, tokenizer, student, teacher)
    dataset = LmSeqsDataset(args, data)
    if len(dataset) == 0:
        raise InputError(f"{args.data_file} has no sequence of {MIN_LEN} tokens or more left to train on")
    return tokenizer, dataset, token_probs, student, teacher


def load_valid(args, tokenizer, train_data):
    """The held-out set, checked and cleaned like the training data; it must share no sequence with it."""
    data = data_io.load_binarized(args.valid_file)
    data_io.check_data_fits(args.valid_file, data, data.meta, tokenizer, args.special_tok_ids)
    data_io.check_held_out(args.data_file, train_data, args.valid_file, data)
    return LmSeqsDataset(args, data)


@reports_errors
def main(argv=None):
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    args = train_args.parse_args(argv)
    dist = log_file = distiller = None
    replaced = None
    held = contextlib.ExitStack()  # the run folder's lock, held to the end
    try:
        # Every check that can fail runs before the run folder is touched.
        train_args.sanity_checks(args)
        check_dump_path(args)
        dist = init_distributed(args.n_gpu)
        args.world_size, args.device = dist.world_size, str(dist.device)
        tokenizer, dataset, token_probs, student, teacher = setup(args)
        valid = load_valid(args, tokenizer, dataset.data) if args.valid_file else None
        distiller = Distiller(args, dataset, token_probs, student, teacher, dist=dist, valid_dataset=valid)
        if args.resume:
            distiller.load_checkpoint()
        # Only now is anything written. parameters.json: the flags as given, and the precision that runs.
        precision = distiller.precision.record(distiller.device.type)
        if dist.is_master:  # one command per run folder; what it found there may have changed while it loaded
            held.enter_context(data_io.folder_lock(lock_path(args.dump_path), f"the run folder {args.dump_path}"))
            check_dump_path(args)
        log_file, aside = prepare_dump_path(args, dist, {"precision": precision})
        replaced = ReplacedRun(args.dump_path, aside)
        distiller.checkpoint_callbacks.append(replaced.drop)
        # A different stream per rank for masking and dropout (the models were built identically above).
        if not args.resume:
            torch.manual_seed(args.seed + dist.rank)
        with logging_redirect_tqdm(loggers=[logging.root]):  # log lines above the progress bar
            finished = distiller.train(stop_after_iter=args.stop_after_iter)
        if finished:
            distiller.save_final(tokenizer)
            logger.info("training finished")
        if dist.world_size > 1:  # every rank done with gloo/NCCL traffic before any tears its group down
            torch.distributed.barrier()
    except BaseException as e:
        if replaced is not None:
            replaced.restore()
        if isinstance(e, NonFiniteLoss):
            fail("train.py", e, NON_FINITE_EXIT)
        raise  # an InputError becomes one line and exit status 2 (reports_errors)
    finally:
        held.close()
        if log_file is not None:
            logger.removeHandler(log_file)
            log_file.close()
        if dist is not None and dist.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
