"""Distil a teacher into a student (steps 5-6 of the recipe): BERT -> DistilBERT by default.

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

Every upstream flag is accepted (examples/research_projects/distillation/train.py). Differences: --fp16
uses torch.amp (no apex; --fp16_opt_level is ignored); --bf16; the defaults are the DistilBERT recipe
(alpha_ce 5, alpha_mlm 2, alpha_cos 1, MLM for distilbert/roberta students); bad input stops with a
one-line error and exit status 2 before anything is written; a non-finite loss stops with exit status 3.
"""

import argparse
import json
import logging
import math
import shutil
import sys
from pathlib import Path

import torch

import data_io
import masking
from distiller import CHECKPOINT, NON_FINITE_EXIT, Distiller, NonFiniteLoss
from errors import InputError, fail, reports_errors
from utils import (
    cpu_bf16_is_fast,
    cpu_description,
    git_log,
    init_distributed,
    load_config,
    load_pretrained,
    load_student_weights,
    logger,
    model_input_limit,
    set_seed,
)
from utils import (
    load_tokenizer as load_tokenizer_or_fail,
)


def model_classes(kind):
    """(config class, model class, tokenizer class) per model type; imported lazily."""
    import transformers as T

    return {
        "distilbert": (T.DistilBertConfig, T.DistilBertForMaskedLM, T.DistilBertTokenizer),
        "roberta": (T.RobertaConfig, T.RobertaForMaskedLM, T.RobertaTokenizer),
        "bert": (T.BertConfig, T.BertForMaskedLM, T.BertTokenizer),
        "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, T.GPT2Tokenizer),
    }[kind]


def build_parser():
    p = argparse.ArgumentParser(description="Distil a teacher LM into a student.")
    a = p.add_argument
    # Run folder
    a("--force", action="store_true", help="replace dump_path; the old one is kept aside until the first checkpoint")
    a("--dump_path", required=True, help="run folder: logs, checkpoints, parameters, the final student")
    a("--resume", action="store_true", help="continue the run in dump_path from its checkpoint.pth")
    # Data
    a("--data_file", required=True, help="binarized text from scripts/binarized_data.py")
    a("--token_counts", default=None, help="token counts from scripts/token_counts.py (MLM masking weights)")
    a(
        "--valid_file",
        default=None,
        help="held-out binarized text (binarized_data.py --valid_size): the student is evaluated on it (MLM)",
    )
    # Student
    # bert: a BertForMaskedLM trained as a plain MLM (--teacher_name none), e.g. a teacher for a small demo
    a("--student_type", required=True, choices=["distilbert", "roberta", "gpt2", "bert"])
    a("--student_config", required=True, help="student config JSON (training_configs/)")
    a(
        "--student_pretrained_weights",
        default=None,
        help="student init from scripts/extract/distilbert.py (.safetensors or .pth), or an HF model folder",
    )
    # Teacher
    a("--teacher_type", required=True, choices=["bert", "roberta", "gpt2"])
    a("--teacher_name", required=True, help="teacher: hub name or folder; 'none' trains a plain MLM without one")
    a("--tokenizer_name", default=None, help="tokenizer (default: the teacher's; needed with --teacher_name none)")
    # Loss
    a("--temperature", default=2.0, type=float, help="softmax temperature of the KD loss (upstream's)")
    a("--alpha_ce", default=5.0, type=float, help="weight of the KD loss (DistilBERT recipe: 5)")
    a("--alpha_mlm", default=None, type=float, help="weight of the MLM loss (default: 2 for MLM, 0 for CLM)")
    a("--alpha_clm", default=None, type=float, help="weight of the CLM loss (default: 0 for MLM, 0.5 for CLM)")
    a("--alpha_mse", default=0.0, type=float, help="weight of the MSE loss on logits (unused in the recipe)")
    a("--alpha_cos", default=1.0, type=float, help="weight of the cosine loss on last hidden states (recipe: 1)")
    a(
        "--mlm",
        action="store_true",
        default=None,
        help="masked-LM objective (the default for distilbert/roberta students; gpt2 students use CLM)",
    )
    a("--mlm_mask_prop", default=0.15, type=float, help="share of tokens to predict (BERT's 15%%)")
    a("--word_mask", default=0.8, type=float, help="of those, share replaced by [MASK]")
    a("--word_keep", default=0.1, type=float, help="share kept as is")
    a("--word_rand", default=0.1, type=float, help="share replaced by a random token")
    a(
        "--mlm_smoothing",
        default=0.7,
        type=float,
        help="masking weight ~ count^-smoothing: rare tokens more often (XLM)",
    )
    a("--restrict_ce_to_mask", action="store_true", help="KD loss on the masked positions only")
    a("--freeze_pos_embs", action="store_true", help="freeze position embeddings (roberta/gpt2 students)")
    a("--freeze_token_type_embds", action="store_true", help="freeze token type embeddings (roberta students)")
    # Optimisation
    a("--n_epoch", type=int, default=3, help="passes over the data (upstream's)")
    a("--batch_size", type=int, default=32, help="sequences per process per batch (the reference run, 24 GB card)")
    a(
        "--group_by_size",
        action="store_false",
        help="upstream's flag: GIVING it turns length grouping OFF (grouping is on by default)",
    )
    a("--no_group_by_size", dest="group_by_size", action="store_false", help="turn length grouping off")
    a("--gradient_accumulation_steps", type=int, default=50, help="batches per optimizer step (upstream's)")
    a("--warmup_prop", default=0.05, type=float, help="share of optimizer steps in linear warmup")
    a("--weight_decay", default=0.0, type=float, help="AdamW weight decay (not on biases and LayerNorms)")
    a("--learning_rate", default=5e-4, type=float, help="peak learning rate")
    a("--adam_epsilon", default=1e-6, type=float, help="AdamW epsilon")
    a("--max_grad_norm", default=5.0, type=float, help="gradient clipping norm")
    a("--initializer_range", default=0.02, type=float, help="(upstream flag; the student config sets its init)")
    # Precision and hardware
    a("--fp16", action="store_true", help="fp16 autocast + GradScaler on CUDA; the teacher in fp16")
    a("--fp16_opt_level", default="O1", help="(apex option, ignored: torch.amp has one mode)")
    a("--bf16", action="store_true", help="bf16 autocast (CUDA or CPU); the teacher in bf16")
    a(
        "--empty_cache_threshold_gb",
        type=float,
        default=2.0,
        help="after a step, empty the CUDA cache when less than this much GPU memory is free (the reference run)",
    )
    a("--n_gpu", type=int, default=1, help="0 forces the CPU; multi-GPU runs come from torchrun")
    a("--local_rank", "--local-rank", type=int, default=-1, help="(set by launchers; torchrun's LOCAL_RANK wins)")
    a(
        "--num_workers",
        type=int,
        default=0,
        help="DataLoader worker processes; 0 (collate in the training process) measured faster: 0.09 ms per "
        "batch of 32 in-process, 1.3 ms through 2 workers",
    )
    a("--pad_to_multiple_of", type=int, default=8, help="pad batch lengths to a multiple of this (tensor cores)")
    a(
        "--max_model_input_size",
        type=int,
        default=None,
        help="split longer sequences (default: the smallest of the tokenizer's and both models' limits)",
    )
    a("--seed", type=int, default=56, help="random seed (upstream's)")
    # Records
    a("--log_interval", type=int, default=500, help="batches between log lines / tensorboard points")
    a("--checkpoint_interval", type=int, default=4000, help="batches between checkpoints")
    a("--eval_interval", type=int, default=4000, help="batches between evaluations on --valid_file (and at the end)")
    a("--stop_after_iter", type=int, default=None, help="stop after this many batches as if killed (tests resume)")
    return p


def resolve_defaults(args):
    if args.mlm is None:
        args.mlm = args.student_type != "gpt2"
    if args.alpha_mlm is None:
        args.alpha_mlm = 2.0 if args.mlm else 0.0
    if args.alpha_clm is None:
        args.alpha_clm = 0.0 if args.mlm else 0.5
    args.no_teacher = args.teacher_name.lower() == "none"
    return args


def sanity_checks(args):
    """The argument combinations upstream rejects with bare asserts, as one-line errors."""
    alphas = {k: getattr(args, f"alpha_{k}") for k in ("ce", "mlm", "clm", "mse", "cos")}
    if any(v < 0 for v in alphas.values()):
        raise InputError(f"loss weights must be >= 0, got {alphas}")
    if sum(alphas.values()) <= 0:
        raise InputError("all loss weights are 0: set at least one of --alpha_ce/mlm/clm/mse/cos")
    if args.mlm and args.alpha_mlm <= 0:
        raise InputError("--mlm needs --alpha_mlm > 0")
    if not args.mlm and args.alpha_mlm > 0:
        raise InputError("--alpha_mlm > 0 needs --mlm (a masked-LM student)")
    if args.alpha_mlm > 0 and args.alpha_clm > 0:
        raise InputError("--alpha_mlm and --alpha_clm are exclusive: an MLM or a CLM objective, not both")
    if not args.mlm and args.alpha_clm <= 0:
        raise InputError("a causal-LM run (no --mlm) needs --alpha_clm > 0")
    if args.mlm:
        if args.token_counts is None:
            raise InputError("--mlm needs --token_counts (from scripts/token_counts.py)")
        if args.student_type not in ("distilbert", "roberta", "bert") or args.teacher_type not in ("bert", "roberta"):
            raise InputError("MLM needs a distilbert/roberta student (or bert) and a bert/roberta teacher")
    elif args.student_type != "gpt2" or args.teacher_type != "gpt2":
        raise InputError("CLM (no --mlm) needs --student_type gpt2 and --teacher_type gpt2")
    if args.teacher_type != args.student_type and not (
        args.student_type == "distilbert" and args.teacher_type == "bert"
    ):
        raise InputError(f"a {args.student_type} student cannot learn from a {args.teacher_type} teacher")
    if args.no_teacher and (args.alpha_ce > 0 or args.alpha_cos > 0 or args.alpha_mse > 0):
        raise InputError("--teacher_name none trains without a teacher: set --alpha_ce 0 --alpha_cos 0 --alpha_mse 0")
    if args.freeze_token_type_embds and args.student_type != "roberta":
        raise InputError("--freeze_token_type_embds is for roberta students only")
    if args.temperature <= 0:
        raise InputError(f"--temperature must be > 0, got {args.temperature}")
    if not 0.0 <= args.mlm_mask_prop <= 1.0:
        raise InputError(f"--mlm_mask_prop must be in [0, 1], got {args.mlm_mask_prop}")
    if not math.isclose(args.word_mask + args.word_keep + args.word_rand, 1.0, abs_tol=1e-6):
        raise InputError("--word_mask + --word_keep + --word_rand must sum to 1")
    if args.fp16 and args.bf16:
        raise InputError("--fp16 and --bf16 are exclusive")
    for name in ("batch_size", "gradient_accumulation_steps", "n_epoch", "log_interval", "checkpoint_interval"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be >= 1")
    if not Path(args.student_config).is_file():
        raise InputError(f"student config {args.student_config} does not exist (see training_configs/)")
    if args.valid_file is not None:
        if not args.mlm:
            raise InputError("--valid_file evaluates masked-LM students only (scripts/evaluate.py)")
        if not Path(args.valid_file).is_file():
            raise InputError(f"--valid_file {args.valid_file} does not exist: binarize with --valid_size N")
    if args.eval_interval < 1:
        raise InputError("--eval_interval must be >= 1")
    if args.student_pretrained_weights is not None and not Path(args.student_pretrained_weights).exists():
        raise InputError(
            f"student weights {args.student_pretrained_weights} do not exist: run scripts/extract/distilbert.py first"
        )
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


def check_data(args, data, data_meta, tokenizer, special):
    data_io.check_data_fits(args.data_file, data, data_meta, tokenizer, special)


def load_token_probs(args, vocab, special):
    return masking.load_token_probs(args.token_counts, vocab, special.values(), args.mlm_smoothing)


def load_student(args, vocab):
    config_class, model_class, _ = model_classes(args.student_type)
    config = load_config(config_class, args.student_config)
    weights = args.student_pretrained_weights
    if weights is not None and Path(weights).is_dir():
        student = load_pretrained(model_class, weights, "the student weights", config=config)
    else:
        student = model_class(config)
        if weights is not None:
            load_student_weights(student, weights)
    if config.vocab_size != vocab:
        raise InputError(f"the student config has vocab_size {config.vocab_size}, the tokenizer {vocab}")
    if args.freeze_pos_embs and args.student_type == "distilbert":
        logger.warning("--freeze_pos_embs applies to roberta/gpt2 students (as upstream): ignored")
    if args.freeze_pos_embs and args.student_type in ("roberta", "gpt2"):
        emb = (
            student.roberta.embeddings.position_embeddings
            if args.student_type == "roberta"
            else student.transformer.wpe
        )
        emb.weight.requires_grad = False
    if args.freeze_token_type_embds:
        student.roberta.embeddings.token_type_embeddings.weight.requires_grad = False
    return student


def load_teacher(args, student):
    _, model_class, _ = model_classes(args.teacher_type)
    teacher = load_pretrained(model_class, args.teacher_name, "the teacher")
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


def replaced_path(dump):
    """Where --force keeps the previous contents of `dump` until the new run's first checkpoint."""
    dump = Path(dump)
    return dump.parent / f".{dump.name}.replaced-by-force"


def prepare_dump_path(args, dist):
    """Create the run folder (rank 0) once every input has been checked, and record the run.

    --force never deletes first: the old folder is moved aside (replaced_path) and deleted only when the
    new run has written its first checkpoint; a run that fails before that puts it back (restore_replaced).
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
                json.dump({k: v for k, v in vars(args).items()}, f, indent=4, default=str)
            git_log(dump)
    if dist.world_size > 1:
        torch.distributed.barrier()
    return (handler if dist.is_master else None), aside


def restore_replaced(dump, aside):
    """Put back the run that --force moved aside, when the new run failed before its first checkpoint."""
    if aside is None or not aside.exists():
        return
    shutil.rmtree(dump, ignore_errors=True)
    aside.rename(dump)
    sys.stderr.write(f"train.py: the previous run in {dump} was left as it was\n")


def setup(args):
    """Load and check the data and models a run needs; write nothing. Returns (tokenizer, dataset,
    token_probs, student, teacher); raises InputError / InputError on bad input."""
    from lm_seqs_dataset import LmSeqsDataset

    set_seed(args.seed)
    data = data_io.load_binarized(args.data_file)
    tokenizer = load_tokenizer(args, data.meta)
    special = data_io.special_token_ids(tokenizer)
    args.special_tok_ids = special
    check_data(args, data, data.meta, tokenizer, special)
    token_probs = load_token_probs(args, len(tokenizer), special) if args.mlm else None

    student = load_student(args, len(tokenizer))
    teacher = None if args.no_teacher else load_teacher(args, student)
    args.max_model_input_size = max_input_size(args, tokenizer, student, teacher)
    dataset = LmSeqsDataset(args, data)
    if len(dataset) == 0:
        raise InputError(f"{args.data_file} has no sequence of 12 tokens or more left to train on")
    return tokenizer, dataset, token_probs, student, teacher


def load_valid(args, tokenizer):
    """The held-out set, checked and cleaned like the training data."""
    from lm_seqs_dataset import LmSeqsDataset

    data = data_io.load_binarized(args.valid_file)
    check_data(argparse.Namespace(data_file=args.valid_file), data, data.meta, tokenizer, args.special_tok_ids)
    return LmSeqsDataset(args, data)


def parse_args(argv=None):
    return resolve_defaults(build_parser().parse_args(argv))


@reports_errors
def main(argv=None):
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    args = parse_args(argv)
    dist = log_file = distiller = None
    aside = None
    try:
        # Every check that can fail runs before the run folder is touched.
        sanity_checks(args)
        dist = init_distributed(args.n_gpu)
        args.world_size, args.device = dist.world_size, str(dist.device)
        if args.fp16 and dist.device.type != "cuda":
            logger.warning("--fp16 needs a CUDA GPU: training in fp32 on the CPU (--bf16 gives mixed precision on CPU)")
            args.fp16 = False
        if args.bf16 and dist.device.type == "cpu" and not cpu_bf16_is_fast():
            logger.warning(
                f"--bf16: this CPU, {cpu_description()}, has no native bf16 (no AVX-512): bf16 would run ~10x "
                f"slower than fp32 here, so training runs in fp32"
            )
            args.bf16 = False
        tokenizer, dataset, token_probs, student, teacher = setup(args)
        valid = load_valid(args, tokenizer) if args.valid_file else None
        distiller = Distiller(args, dataset, token_probs, student, teacher, dist=dist, valid_dataset=valid)
        if args.resume:
            distiller.load_checkpoint()
        # Only now is anything written.
        log_file, aside = prepare_dump_path(args, dist)
        distiller.replaced_run = aside
        # A different stream per rank for masking and dropout (the models were built identically above).
        if not args.resume:
            torch.manual_seed(args.seed + dist.rank)
        finished = distiller.train(stop_after_iter=args.stop_after_iter)
        if finished:
            distiller.save_final(tokenizer)
            logger.info("training finished")
    except BaseException as e:
        if aside is not None and distiller is not None and distiller.replaced_run is not None:
            restore_replaced(Path(args.dump_path), aside)
        if isinstance(e, NonFiniteLoss):
            fail("train.py", e, NON_FINITE_EXIT)
        raise  # an InputError becomes one line and exit status 2 (reports_errors)
    finally:
        if log_file is not None:
            logger.removeHandler(log_file)
            log_file.close()
        if dist is not None and dist.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
