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
their defaults, in training/train_args.py. Differences: --fp16
uses torch.amp (no apex; --fp16_opt_level is ignored); --bf16; the defaults are the DistilBERT recipe
(alpha_ce 5, alpha_mlm 2, alpha_cos 1, MLM for distilbert/roberta students); bad input stops with a
one-line error and exit status 2 before anything is written; a non-finite loss stops with exit status 3.
"""

import contextlib
import json
import logging
import sys
from pathlib import Path

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from core import files, teachers
from core.errors import NON_FINITE_EXIT, InputError, NonFiniteLoss, fail, reports_errors
from core.loading import load_tokenizer as load_tokenizer_or_fail, model_input_limit
from core.run_folder import Replacement
from distiller import Distiller
from lm_seqs_dataset import MIN_LEN, LmSeqsDataset, SequenceSpec
from training import data_checks, data_format, masking, train_args
from training.checkpoint import CHECKPOINT
from training.models import load_student, model_classes
from utils import git_log, init_distributed, logger, set_seed


def check_dump_path(args):
    """--resume needs a checkpoint; an existing run folder needs --force; the folder must be writable."""
    dump = Path(args.dump_path)
    if args.resume:
        if not (dump / CHECKPOINT).is_file():
            raise InputError(f"--resume: no checkpoint in {dump}; start the run without --resume")
    elif dump.exists() and not args.force:
        raise InputError(f"{dump} already exists: use --force to overwrite it, or --resume to continue the run in it")
    files.check_writable(dump, "run folder --dump_path", folder=True)


def load_tokenizer(args, data_meta):
    name = args.tokenizer_name or (None if args.no_teacher else args.teacher_name) or data_meta.get("tokenizer_name")
    if name is None:
        raise InputError("--teacher_name none: give --tokenizer_name (the data file does not name its tokenizer)")
    # the data's tokenizer: the teacher's, except for a teacher that reads the same pieces under its own ids
    _, _, tokenizer_class = model_classes(args.student_type if args.teacher_type == "mpnet" else args.teacher_type)
    what = "the tokenizer" if args.tokenizer_name or args.no_teacher else "the teacher"
    return load_tokenizer_or_fail(tokenizer_class, name, what)


def build_teacher(args, student, tokenizer, texts):
    """(train.py's teacher, frozen; its ids of the student's pieces or None): refused where a loss in use would
    read a vocabulary head it lacks, or where its tokenizer splits `texts` (rows of the data) otherwise than the
    student's. A vocabulary of the same pieces under other ids (all-mpnet-base-v2's) is mapped."""
    _, model_class, _ = model_classes(args.teacher_type)
    teacher, no_head = teachers.load_frozen(model_class, args.teacher_name)
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
    id_map = None
    if args.teacher_type == "mpnet" or s.vocab_size != t.vocab_size:
        t_tokenizer = load_tokenizer_or_fail(model_classes(args.teacher_type)[2], args.teacher_name,
                                             "the teacher's tokenizer")
        differs = teachers.tokenization_differs(tokenizer, t_tokenizer, texts)
        if differs:
            id_map, why = teachers.piece_map(tokenizer, t_tokenizer, texts)
            if id_map is None:
                raise InputError(f"the teacher {args.teacher_name} has {differs} and its pieces differ ({why}): "
                                 "train.py compares the two models position by position, so it needs one "
                                 "tokenization")
            if args.alpha_ce > 0 or args.alpha_mse > 0:
                raise InputError(f"the teacher {args.teacher_name} orders its vocabulary otherwise ({differs}): "
                                 "--alpha_ce and --alpha_mse compare vocabulary distributions; set them to 0 and "
                                 "use --alpha_cos or the relation losses --alpha_att/qq/kk/vv")
            logger.info(f"the teacher reads the student's pieces under its own ids ({differs})")
    if args.alpha_cos > 0 or args.alpha_mse > 0:
        teachers.check_width(s, t, "the cosine loss compares hidden states (set --alpha_cos 0, or match the sizes)")
    return teacher, id_map


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


def replacement(dump):
    """--force's replacement of a run (run_folder.py): its commit point is the new run's first checkpoint."""
    return Replacement(dump, lambda folder: (folder / CHECKPOINT).is_file(), "written its first checkpoint", "--force")


def recover(args, dist):
    """Settle what a killed --force left in the run folder, by run_folder.py's one rule, before any check reads
    it. A --resume of a replacement that never reached its first checkpoint has nothing to resume: refused."""
    what = note = None
    if dist.is_master:
        replacing = replacement(args.dump_path)
        what = replacing.pending()
        if what:
            with files.folder_lock(lock_path(args.dump_path), f"the run folder {args.dump_path}"):
                note = replacing.recover()
            logger.warning(note)
    if dist.world_size > 1:  # every rank learns what was done, and checks the folder only once it is settled
        shared = [what, note]
        torch.distributed.broadcast_object_list(shared, src=0)
        what, note = shared
    if args.resume and what == "put back":
        raise InputError(f"--resume: {note}: nothing of it to resume; start it again with --force")


def prepare_dump_path(args, dist, decided, replacing):
    """Create the run folder (rank 0) once every input has been checked, and record the run.

    --force never deletes first: `replacing` (run_folder.Replacement) moves the old folder aside, and removes it
    when the new run has written its first checkpoint; a run that fails before that puts it back.
    `decided`: what the run settled beyond its flags, recorded in parameters.json beside them.
    Returns the log file handler (rank 0; None on the others)."""
    dump = Path(args.dump_path)
    if dist.is_master and args.force and not args.resume:
        replacing.begin()
    if dist.is_master:
        dump.mkdir(parents=True, exist_ok=True)
        for stale in dump.glob(".*.tmp"):  # temporary files of a checkpoint write that was killed
            stale.unlink()
        handler = logging.FileHandler(dump / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        if replacing.begun:
            logger.info(f"--force: the previous {dump} is kept in {replacing.aside} until this run's first checkpoint")
        if not args.resume:
            with open(dump / "parameters.json", "w") as f:
                json.dump({**vars(args), **decided}, f, indent=4, default=str)
            git_log(dump)
    if dist.world_size > 1:
        torch.distributed.barrier()
    return handler if dist.is_master else None


def setup(args):
    """Load and check the data and models a run needs; write nothing. Returns (tokenizer, dataset,
    token_probs, student, teacher); raises InputError / InputError on bad input."""
    set_seed(args.seed)
    data = data_format.load_binarized(args.data_file)
    tokenizer = load_tokenizer(args, data.meta)
    special = data_format.special_token_ids(tokenizer)
    data_checks.check_data_fits(args.data_file, data, data.meta, tokenizer, special)
    token_probs = None
    if args.mlm:
        token_probs = masking.load_token_probs(args.token_counts, len(tokenizer), special.values(), args.mlm_smoothing,
                                               data_format.vocab_digest(tokenizer))

    student = load_student(args, len(tokenizer))
    texts = [tokenizer.decode(data[i].tolist(), skip_special_tokens=True) for i in range(min(64, len(data)))]
    teacher, teacher_ids = (None, None) if args.no_teacher else build_teacher(args, student, tokenizer, texts)
    # The sequences' spec, frozen: the dataset and the masking read it, not the flags.
    spec = SequenceSpec(special, max_input_size(args, tokenizer, student, teacher), args.mlm, args.pad_to_multiple_of)
    dataset = LmSeqsDataset(spec, data)
    if len(dataset) == 0:
        raise InputError(f"{args.data_file} has no sequence of {MIN_LEN} tokens or more left to train on")
    return tokenizer, dataset, token_probs, student, teacher, teacher_ids


def load_valid(args, tokenizer, train):
    """The held-out set, checked and cleaned like the training data (`train`, an LmSeqsDataset); it must share
    no sequence with it."""
    data = data_format.load_binarized(args.valid_file)
    data_checks.check_data_fits(args.valid_file, data, data.meta, tokenizer, train.spec.special_ids)
    data_checks.check_held_out(args.data_file, train.data, args.valid_file, data)
    return LmSeqsDataset(train.spec, data)


@reports_errors
def main(argv=None):
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    args = train_args.parse_args(argv)
    dist = log_file = distiller = None
    replacing = None
    held = contextlib.ExitStack()  # the run folder's lock, held to the end
    try:
        # Every check that can fail runs before the run folder is touched.
        train_args.sanity_checks(args)
        dist = init_distributed(args.n_gpu)
        args.world_size, args.device = dist.world_size, str(dist.device)
        recover(args, dist)
        check_dump_path(args)
        tokenizer, dataset, token_probs, student, teacher, teacher_ids = setup(args)
        valid = load_valid(args, tokenizer, dataset) if args.valid_file else None
        distiller = Distiller(args, dataset, token_probs, student, teacher, dist=dist, valid_dataset=valid,
                              teacher_ids=teacher_ids)
        if args.resume:
            distiller.load_checkpoint()
        # Only now is anything written. parameters.json: the flags as given, the precision that runs and the
        # sequences' spec.
        decided = {"precision": distiller.precision.record(distiller.device.type),
                   "teacher_reads": "the student's ids" if teacher_ids is None else "the student's pieces under its "
                   "own ids (core/teachers.piece_map)",
                   "special_tok_ids": dataset.spec.special_ids, "max_model_input_size": dataset.spec.max_len}
        if dist.is_master:  # one command per run folder; what it found there may have changed while it loaded
            held.enter_context(files.folder_lock(lock_path(args.dump_path), f"the run folder {args.dump_path}"))
            check_dump_path(args)
        replacing = replacement(args.dump_path)
        log_file = prepare_dump_path(args, dist, decided, replacing)
        distiller.checkpoint_callbacks.append(replacing.commit)  # the first checkpoint: the old run can go
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
        if replacing is not None and replacing.begun:  # failed before its first checkpoint: the old run comes back
            replacing.rollback()
            sys.stderr.write(f"train.py: the previous run in {args.dump_path} was left as it was\n")
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
