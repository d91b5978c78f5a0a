"""train.py's command-line flags, their defaults (the DistilBERT recipe, each with its reason), and the checks
of their combinations that run before anything is loaded.

Tools that build a Distiller without a command line (benchmarks/bench_train.py, scripts/demo_plan.py)
take the same defaults from `defaults()`.
"""

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, finite_float
from training import masking
from training.losses import RELATION_LOSSES
from utils import logger

# The published recipes as loss weights (alpha_<name>); every weight not listed is 0, and of mlm and clm only the
# run's own LM loss is kept (MLM for --mlm runs, CLM for GPT-2). train.sh's OBJECTIVE= and the demo pick these.
OBJECTIVES = {
    "distilbert": dict(ce=5.0, mlm=2.0, clm=0.5, cos=1.0,
                       about="KD 5 + MLM 2 (CLM 0.5) + cosine 1, Sanh et al. 2019"),
    "minilm": dict(att=1.0, vv=1.0, about="last-layer attention KL + value relation, 1 each, Wang et al. 2020"),
    "minilmv2": dict(qq=1.0, kk=1.0, vv=1.0, relation_heads=48,
                     about="last-layer Q-Q, K-K, V-V relations over 48 heads, Wang et al. 2021"),
    "mlm": dict(mlm=1.0, clm=1.0, about="the LM loss alone, no teacher needed (the no-distillation baseline)"),
}


def build_parser(paths_required=True):
    """train.py's parser; paths_required=False for tools that build a Distiller without a command line."""
    p = argparse.ArgumentParser(prog="train.py", description="Distil a teacher LM into a student.")
    a = p.add_argument
    # Run folder
    a("--force", action="store_true", help="replace dump_path; the old one is kept aside until the first checkpoint")
    a("--dump_path", required=paths_required, help="run folder: logs, checkpoints, parameters, the final student")
    a("--resume", action="store_true", help="continue the run in dump_path from its checkpoint.pth")
    # Data
    a("--data_file", required=paths_required, help="binarized text from scripts/binarized_data.py")
    a("--token_counts", default=None, help="token counts from scripts/token_counts.py (MLM masking weights)")
    a(
        "--valid_file",
        default=None,
        help="held-out binarized text (binarized_data.py --valid_size): the student is evaluated on it (MLM)",
    )
    # Student
    # bert: a BertForMaskedLM trained as a plain MLM (--teacher_name none), e.g. a teacher for a small demo
    a("--student_type", required=paths_required, choices=["distilbert", "roberta", "gpt2", "bert"])
    a("--student_config", required=paths_required, help="student config JSON (training_configs/)")
    a(
        "--student_pretrained_weights",
        default=None,
        help="student init from scripts/extract/distilbert.py (.safetensors or .pth), or an HF model folder",
    )
    # Teacher
    # mpnet: all-mpnet-base-v2 (headless), its ids the student's pieces under its own (core/teachers.piece_map)
    a("--teacher_type", required=paths_required, choices=["bert", "roberta", "gpt2", "mpnet"])
    a("--teacher_name", required=paths_required,
      help="teacher: hub name or folder; 'none' trains a plain MLM without one")
    a("--tokenizer_name", default=None, help="the student's tokenizer, the data's (default: the teacher's; needed with "
      "--teacher_name none, or a teacher of its own ids such as mpnet)")
    # Loss: --objective picks the weights (OBJECTIVES below); an --alpha_* flag given explicitly wins
    a("--objective", default="distilbert", choices=list(OBJECTIVES),
      help="the loss weights of a published recipe (default: DistilBERT's, the reference run's); "
           + "; ".join(f"{k}: {v['about']}" for k, v in OBJECTIVES.items()))
    a("--temperature", default=2.0, type=finite_float, help="softmax temperature of the KD loss (upstream's)")
    a("--alpha_ce", type=finite_float, help="weight of the KD loss (distilbert: 5)")
    a("--alpha_mlm", type=finite_float, help="weight of the MLM loss (distilbert: 2; mlm: 1; CLM runs: 0)")
    a("--alpha_clm", type=finite_float, help="weight of the CLM loss (distilbert: 0.5; mlm: 1; MLM runs: 0)")
    a("--alpha_mse", type=finite_float, help="weight of the MSE loss on logits (no recipe uses it)")
    a("--alpha_cos", type=finite_float, help="weight of the cosine loss on last hidden states (distilbert: 1)")
    # Self-attention relation transfer (MiniLM)
    a("--alpha_att", type=finite_float,
      help="weight of the KL between teacher and student attention distributions, per head (minilm: 1)")
    a("--alpha_qq", type=finite_float, help="weight of the query-query relation loss (minilmv2: 1)")
    a("--alpha_kk", type=finite_float, help="weight of the key-key relation loss (minilmv2: 1)")
    a("--alpha_vv", type=finite_float, help="weight of the value-value relation loss (minilm, minilmv2: 1)")
    a("--relation_heads", default=None, type=int,
      help="heads the qq/kk/vv relations split Q, K, V into (default: the student's attention heads, MiniLM's "
           "value relation; minilmv2: 48, as MiniLMv2 used for base-size models)")
    a("--teacher_layer", default=None, type=int,
      help="teacher layer (1-based) whose self-attention the relation losses transfer (default: the last)")
    a(
        "--mlm",
        action="store_true",
        default=None,
        help="masked-LM objective (the default for distilbert/roberta students; gpt2 students use CLM)",
    )
    masking.add_flags(a)  # --mlm_mask_prop, --word_mask, --word_keep, --word_rand, --mlm_smoothing
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
    a("--warmup_prop", default=0.05, type=finite_float, help="share of optimizer steps in linear warmup")
    a("--weight_decay", default=0.0, type=finite_float, help="AdamW weight decay (not on biases and LayerNorms)")
    a("--learning_rate", default=5e-4, type=finite_float, help="peak learning rate")
    a("--adam_epsilon", default=1e-6, type=finite_float, help="AdamW epsilon")
    a("--max_grad_norm", default=5.0, type=finite_float, help="gradient clipping norm")
    a("--initializer_range", default=0.02, type=finite_float, help="(upstream flag; the student config sets its init)")
    # Precision and hardware
    a("--fp16", action="store_true", help="fp16 autocast + GradScaler on CUDA; the teacher in fp16")
    a("--fp16_opt_level", default="O1", help="(apex option, ignored: torch.amp has one mode)")
    a("--bf16", action="store_true", help="bf16 autocast (CUDA or CPU); the teacher in bf16")
    a(
        "--empty_cache_threshold_gb",
        type=finite_float,
        default=2.0,
        help="after a step, empty the CUDA cache when less than this much GPU memory is free (the reference run)",
    )
    a("--n_gpu", type=int, default=1, help="0 forces the CPU; multi-GPU runs come from torchrun")
    a("--local_rank", "--local-rank", type=int, default=-1, help="(set by launchers; torchrun's LOCAL_RANK wins)")
    a(
        "--num_workers",
        type=int,
        default=0,
        help="DataLoader worker processes; 0: collating in the training process is faster than shipping "
        "batches from workers (docs/benchmarks.md)",
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
    """Fill what no flag gave: MLM unless the student is GPT-2, and every loss weight from --objective."""
    if args.mlm is None:
        args.mlm = args.student_type != "gpt2"
    preset = OBJECTIVES[args.objective]
    other_lm = "clm" if args.mlm else "mlm"  # the LM loss this run does not have

    def weight(given, name):  # a flag given explicitly wins over the objective's recipe
        return given if given is not None else 0.0 if name == other_lm else preset.get(name, 0.0)

    args.alpha_ce = weight(args.alpha_ce, "ce")
    args.alpha_mlm = weight(args.alpha_mlm, "mlm")
    args.alpha_clm = weight(args.alpha_clm, "clm")
    args.alpha_mse = weight(args.alpha_mse, "mse")
    args.alpha_cos = weight(args.alpha_cos, "cos")
    args.alpha_att = weight(args.alpha_att, "att")
    args.alpha_qq = weight(args.alpha_qq, "qq")
    args.alpha_kk = weight(args.alpha_kk, "kk")
    args.alpha_vv = weight(args.alpha_vv, "vv")
    if args.relation_heads is None:
        args.relation_heads = preset.get("relation_heads")
    args.no_teacher = args.teacher_name.lower() == "none"
    return args


def sanity_checks(args):
    """The argument combinations upstream rejects with bare asserts, as one-line errors; a warning for flags
    that would be ignored."""
    alphas = dataclasses.asdict(LossWeights.from_args(args))
    for k, v in alphas.items():
        if not math.isfinite(v):  # NaN > 0 is False: a NaN weight would turn its loss off without a word
            raise InputError(f"--alpha_{k} must be a finite number, got {v}")
        if v < 0:
            raise InputError(f"loss weights must be >= 0, got --alpha_{k} {v}")
    if sum(alphas.values()) <= 0:
        raise InputError("all loss weights are 0: set at least one of --alpha_ce/mlm/clm/mse/cos/att/qq/kk/vv")
    relations = any(alphas[k] > 0 for k in RELATION_LOSSES)
    if args.mlm and args.alpha_mlm <= 0 and not relations:  # MiniLM's recipe has no LM loss
        raise InputError("--mlm needs --alpha_mlm > 0 (or a relation loss: --alpha_att/qq/kk/vv)")
    if relations and not args.mlm:
        raise InputError("the relation losses (--alpha_att/qq/kk/vv) are for BERT-style students (--mlm)")
    if args.relation_heads is not None and args.relation_heads < 1:
        raise InputError(f"--relation_heads must be >= 1, got {args.relation_heads}")
    if args.teacher_layer is not None and args.teacher_layer < 1:  # 0 used to mean the last layer, silently
        raise InputError(
            f"--teacher_layer counts the teacher's layers from 1 (the first) to its number of layers (the last, "
            f"the default), got {args.teacher_layer}"
        )
    if not args.mlm and args.alpha_mlm > 0:
        raise InputError("--alpha_mlm > 0 needs --mlm (a masked-LM student)")
    if args.alpha_mlm > 0 and args.alpha_clm > 0:
        raise InputError("--alpha_mlm and --alpha_clm are exclusive: an MLM or a CLM objective, not both")
    if not args.mlm and args.alpha_clm <= 0:
        raise InputError("a causal-LM run (no --mlm) needs --alpha_clm > 0")
    if args.mlm:
        if args.token_counts is None:
            raise InputError("--mlm needs --token_counts (from scripts/token_counts.py)")
        if args.student_type not in ("distilbert", "roberta", "bert") or args.teacher_type == "gpt2":
            raise InputError("MLM needs a distilbert/roberta student (or bert) and a bert/roberta/mpnet teacher")
    elif args.student_type != "gpt2" or args.teacher_type != "gpt2":
        raise InputError("CLM (no --mlm) needs --student_type gpt2 and --teacher_type gpt2")
    if args.teacher_type != args.student_type and not (
        args.student_type in ("distilbert", "bert") and args.teacher_type in ("bert", "mpnet")
    ):
        raise InputError(f"a {args.student_type} student cannot learn from a {args.teacher_type} teacher")
    if args.teacher_type == "mpnet" and not args.tokenizer_name:
        raise InputError("--teacher_type mpnet reads the student's word pieces under its own ids: give "
                         "--tokenizer_name, the student's tokenizer (the one the data was binarized with)")
    if args.no_teacher and (args.alpha_ce > 0 or args.alpha_cos > 0 or args.alpha_mse > 0 or relations):
        raise InputError("--teacher_name none trains without a teacher: set --alpha_ce 0 --alpha_cos 0 --alpha_mse 0 "
                         "(and no relation loss)")
    if args.freeze_token_type_embds and args.student_type != "roberta":
        raise InputError("--freeze_token_type_embds is for roberta students only")
    if not 0 < args.temperature < math.inf:  # NaN fails both
        raise InputError(f"--temperature must be > 0 and finite, got {args.temperature}")
    masking.check_flags(args)
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
    # Last, so that a run which fails above prints its error alone.
    unused = [f"--{k}" for k in ("teacher_layer", "relation_heads") if getattr(args, k) is not None]
    if unused and not relations:
        logger.warning(f"{' and '.join(unused)}: ignored, only the relation losses (--alpha_att/qq/kk/vv) use them")


@dataclass(frozen=True)
class LossWeights:
    """The loss weights, built once from the flags (from_args); each field is one --alpha_* flag's home, and
    Distiller.compute_losses() reads them by name: `w.ce` is --alpha_ce."""

    ce: float = 0.0  # --alpha_ce: KD, KL(teacher || student) at --temperature x T^2 (losses.kd_loss, FusedKD)
    mlm: float = 0.0  # --alpha_mlm: masked-LM cross-entropy on the masked rows
    clm: float = 0.0  # --alpha_clm: causal-LM cross-entropy on the next tokens (GPT-2 students)
    mse: float = 0.0  # --alpha_mse: squared error between the logits (losses.mse_loss)
    cos: float = 0.0  # --alpha_cos: cosine loss on the last hidden states (losses.cosine_loss)
    att: float = 0.0  # --alpha_att: MiniLM's KL of the attention distributions (losses.relation_losses)
    qq: float = 0.0  # --alpha_qq: MiniLMv2's query-query relation
    kk: float = 0.0  # --alpha_kk: MiniLMv2's key-key relation
    vv: float = 0.0  # --alpha_vv: MiniLM's value-value relation

    @classmethod
    def from_args(cls, args):
        return cls(ce=args.alpha_ce, mlm=args.alpha_mlm, clm=args.alpha_clm, mse=args.alpha_mse, cos=args.alpha_cos,
                   att=args.alpha_att, qq=args.alpha_qq, kk=args.alpha_kk, vv=args.alpha_vv)

    def of(self, name):
        """The weight of the loss called `name` (a key of the losses Distiller.compute_losses() returns)."""
        return getattr(self, name)


@dataclass(frozen=True)
class LossPlan:
    """Which losses a run computes and what they need, decided from the flags before any model is built."""

    weights: LossWeights
    lm: str  # "mlm" or "clm": the student's own LM loss
    relations: tuple  # MiniLM's losses that are on, in RELATION_LOSSES order
    needs_teacher: bool
    head_used: bool  # a loss reads the vocabulary logits (not with cosine or relation losses alone)
    kd_all_rows: bool  # KD / MSE read the teacher's logits on every non-pad row, not only the masked ones
    fused_kd: bool  # KD straight from both models' features (losses.FusedKD); MSE needs the logits themselves

    @classmethod
    def from_args(cls, args):
        w = LossWeights.from_args(args)
        relations = tuple(k for k in RELATION_LOSSES if w.of(k) > 0)
        return cls(
            weights=w,
            lm="mlm" if args.mlm else "clm",
            relations=relations,
            needs_teacher=w.ce > 0 or w.mse > 0 or w.cos > 0 or bool(relations),
            head_used=w.ce > 0 or w.mlm > 0 or w.clm > 0 or w.mse > 0,
            kd_all_rows=(w.ce > 0 or w.mse > 0) and not args.restrict_ce_to_mask,
            fused_kd=w.ce > 0 and w.mse == 0,
        )


def parse_args(argv=None):
    return resolve_defaults(build_parser().parse_args(argv))


def defaults(**overrides):
    """train.py's arguments with no flag given (required paths left None), then `overrides` applied."""
    args = build_parser(paths_required=False).parse_args([])
    vars(args).update({"teacher_name": "-", **overrides})
    return resolve_defaults(args)
