"""Build a DistilBERT student's initial weights from a BERT teacher (step 5 of the recipe).

    python scripts/extract/distilbert.py
        # 4-layer student (training_configs/distilbert-small-uncased.json) from bert-base-uncased, layers
        # 0,4,7,11 -> serialization_dir/distilbert-small-uncased.from-bert-base-uncased.safetensors (~200 MB)
    python scripts/extract/distilbert.py --student_config training_configs/distilbert-base-uncased.json
        # 6 layers 0,2,4,7,9,11 (upstream's choice) -> serialization_dir/distilbert-base-uncased.from-...
    python scripts/extract/distilbert.py --layers 0,3,8,11 --dump_checkpoint my_init.safetensors
    python scripts/extract/distilbert.py --model_name M --student_config C --save_pretrained student/
        # also a model folder (config, weights, the teacher's tokenizer) that run_glue.py and the HF
        # loaders take as it is: a student fine-tuned from the teacher's layers, with no distillation yet
    python scripts/extract/distilbert.py ... --random_init --save_pretrained random_student/
        # the same shape with no teacher weights at all (its own seeded initialisation): the baseline

Copied: the word and position embeddings and their LayerNorm, the chosen encoder layers (attention, FFN,
both LayerNorms), and the MLM head (the projector's bias; its weight is tied to the word embeddings) with
its transform (dense + LayerNorm; `--no_vocab_transform` leaves it at random init, as upstream's default
did). A teacher saved without its MLM head (a BertModel: sentence-embedding models, fine-tuned encoders)
gives no head to copy: the student's is then its own (seeded) random initialisation, and the script says so.
BERT adds token-type embedding 0 to every single-segment input and DistilBERT has no token types, so that
vector is folded into the position embeddings: the student's embedding output then equals the teacher's
(`--no_fold_token_type` drops it instead, as upstream did).

Default layers are spread evenly over the teacher: round(i * (L - 1) / (n - 1)) for i in 0..n-1.

The checkpoint is a safetensors file (a `.pth` name writes a torch state dict instead) whose metadata
records the teacher, the layers and the config; train.py's `--student_pretrained_weights` loads it and
checks every key against the student config.
"""

import argparse
import json
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

from core.errors import InputError, reports_errors
from core.files import atomic_write, check_writable
from core.loading import load_config, load_lm, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_CONFIG = ROOT / "training_configs" / "distilbert-small-uncased.json"  # the 4-layer student of the seed
FRESH_HEAD_SEED = 0  # the initialisation of the head of a student whose teacher has none


def spread_layers(n_student, n_teacher):
    """n_student teacher layer indices spread evenly from the first to the last: 6 of 12 -> 0,2,4,7,9,11."""
    if not 1 <= n_student <= n_teacher:
        raise InputError(f"cannot pick {n_student} layers from a teacher with {n_teacher}")
    if n_student == 1:
        return [n_teacher - 1]
    return [int(i * (n_teacher - 1) / (n_student - 1) + 0.5) for i in range(n_student)]


def parse_layers(text, n_student, n_teacher):
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--layers {text!r}: give comma-separated teacher layer indices, e.g. 0,4,7,11") from None
    if len(layers) != n_student:
        raise InputError(f"--layers lists {len(layers)} layers but the student config has n_layers={n_student}")
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad:
        raise InputError(f"--layers {bad} out of range: the teacher has layers 0..{n_teacher - 1}")
    twice = sorted({i for i in layers if layers.count(i) > 1})
    if twice:  # two student layers would start as one: a typo far more often than a choice
        raise InputError(f"--layers {text} copies teacher layer {twice[0]} twice: give {n_student} different layers")
    return layers


def check_fits(config, tc):
    """The student config must have the teacher's widths (layers are copied) and vocabulary (its tokenizer)."""
    for what, s_val, t_val in (
        ("hidden size", config.dim, tc.hidden_size),
        ("vocab size", config.vocab_size, tc.vocab_size),
        ("attention heads", config.n_heads, tc.num_attention_heads),
        ("FFN size", config.hidden_dim, tc.intermediate_size),
        ("max positions", config.max_position_embeddings, tc.max_position_embeddings),
    ):
        if s_val != t_val:
            raise InputError(f"student {what} {s_val} differs from the teacher's {t_val}: layers cannot be copied")
    if getattr(config, "sinusoidal_pos_embds", False):
        raise InputError("the student config uses sinusoidal position embeddings; these copy learned ones")


def extract(teacher, config, layers, vocab_transform=True, fold_token_type=True, teacher_head=True):
    """The student state dict: a copy of the teacher's embeddings, `layers` and MLM head, renamed
    (teacher_head=False: the teacher has no MLM head, and the student's is its own initialisation)."""
    t = teacher.state_dict()
    check_fits(config, teacher.config)
    pos = t["bert.embeddings.position_embeddings.weight"]
    if fold_token_type:
        pos = pos + t["bert.embeddings.token_type_embeddings.weight"][0]
    out = {
        "distilbert.embeddings.word_embeddings.weight": t["bert.embeddings.word_embeddings.weight"],
        "distilbert.embeddings.position_embeddings.weight": pos,
        "distilbert.embeddings.LayerNorm.weight": t["bert.embeddings.LayerNorm.weight"],
        "distilbert.embeddings.LayerNorm.bias": t["bert.embeddings.LayerNorm.bias"],
    }
    names = {  # DistilBERT layer part -> BERT layer part
        "attention.q_lin": "attention.self.query",
        "attention.k_lin": "attention.self.key",
        "attention.v_lin": "attention.self.value",
        "attention.out_lin": "attention.output.dense",
        "sa_layer_norm": "attention.output.LayerNorm",
        "ffn.lin1": "intermediate.dense",
        "ffn.lin2": "output.dense",
        "output_layer_norm": "output.LayerNorm",
    }
    for s_idx, t_idx in enumerate(layers):
        for s_name, t_name in names.items():
            for w in ("weight", "bias"):
                out[f"distilbert.transformer.layer.{s_idx}.{s_name}.{w}"] = t[
                    f"bert.encoder.layer.{t_idx}.{t_name}.{w}"
                ]
    head = {"vocab_projector.bias": "cls.predictions.bias"}  # the projector's weight is the word embeddings
    if vocab_transform:
        for w in ("weight", "bias"):
            head[f"vocab_transform.{w}"] = f"cls.predictions.transform.dense.{w}"
            head[f"vocab_layer_norm.{w}"] = f"cls.predictions.transform.LayerNorm.{w}"
    if teacher_head:
        out.update({s_key: t[t_key] for s_key, t_key in head.items()})
    else:  # from_pretrained filled the missing head with random weights: noise, not the teacher's knowledge
        fresh = fresh_student(config)
        out.update({s_key: fresh[s_key] for s_key in head})
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def fresh_student(config):
    """A newly initialised student's state dict, under a fixed seed: the same file every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FRESH_HEAD_SEED)
        return DistilBertForMaskedLM(config).state_dict()


def save_pretrained(state, config, tokenizer, folder, metadata):
    """The student as a HF model folder: config, weights (loaded strictly) and the teacher's tokenizer."""

    folder = Path(folder)
    model = DistilBertForMaskedLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"vocab_projector.weight"}, (missing, unexpected)  # tied weight
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    with atomic_write(folder / "extraction.json", "w") as f:  # what the folder was made from
        json.dump(metadata, f, indent=2, default=str)


def save(state, path, metadata):
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        blob = save(state, metadata={k: str(v) for k, v in metadata.items()})
        with atomic_write(path) as f:
            f.write(blob)
    else:
        with atomic_write(path) as f:
            torch.save(state, f)


@reports_errors
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model_type", default="bert", choices=["bert"], help="teacher architecture")
    parser.add_argument("--model_name", default="bert-base-uncased", help="teacher: a hub name or a folder")
    parser.add_argument("--student_config", default=str(DEFAULT_CONFIG.relative_to(ROOT)), help="student config JSON")
    parser.add_argument("--layers", default=None, help="teacher layers to copy, e.g. 0,4,7,11 (default: spread evenly)")
    parser.add_argument(
        "--dump_checkpoint",
        default=None,
        help="output file (default: serialization_dir/<config>.from-<teacher>.safetensors; .pth writes torch format)",
    )
    parser.add_argument(
        "--vocab_transform",
        action=argparse.BooleanOptionalAction,
        default=True,  # the projector is tied to the word embeddings and expects the transform's output
        help="copy the MLM head's transform (dense + LayerNorm); on by default",
    )
    parser.add_argument(
        "--fold_token_type",
        action=argparse.BooleanOptionalAction,
        default=True,  # makes the student's embedding output equal the teacher's on single-segment input
        help="add BERT's token-type embedding 0 into the position embeddings; on by default",
    )
    parser.add_argument(
        "--save_pretrained",
        default=None,
        metavar="DIR",
        help="also write the student as a model folder (config, weights, the teacher's tokenizer) for run_glue.py",
    )
    parser.add_argument(
        "--random_init",
        action="store_true",
        help="no teacher weights: the student's own seeded initialisation (the no-pretraining baseline)",
    )
    args = parser.parse_args(argv)
    # transformers' load report lists the head a headless teacher lacks: this script says so in one line
    transformers.logging.set_verbosity_error()

    try:
        config_path = Path(args.student_config)
        config = load_config(DistilBertConfig, config_path)
        dump = args.dump_checkpoint or (
            ROOT / "serialization_dir" / f"{config_path.stem}.from-{Path(args.model_name.rstrip('/')).name}.safetensors"
        )
        check_writable(dump, "--dump_checkpoint")  # before the teacher is loaded, not after
        if args.save_pretrained:
            check_writable(args.save_pretrained, "--save_pretrained", folder=True)
        if args.random_init and args.layers:
            raise InputError("--random_init copies no layers: leave out --layers")
        tokenizer = (
            load_tokenizer(AutoTokenizer, args.model_name, "the teacher's tokenizer") if args.save_pretrained else None
        )
        teacher, no_head = load_lm(BertForMaskedLM, args.model_name, "the teacher")
        n_teacher = teacher.config.num_hidden_layers
        if args.random_init:
            layers, state = (
                [],
                {k: v.contiguous() for k, v in fresh_student(config).items() if k != "vocab_projector.weight"},
            )
            check_fits(config, teacher.config)
        else:
            layers = (
                parse_layers(args.layers, config.n_layers, n_teacher)
                if args.layers
                else spread_layers(config.n_layers, n_teacher)
            )
            state = extract(teacher, config, layers, args.vocab_transform, args.fold_token_type, not no_head)
        metadata = {
            "teacher": args.model_name,
            "teacher_mlm_head": not no_head,  # False: the student's head is its own initialisation
            "teacher_layers": ",".join(map(str, layers)) if layers else "none (--random_init)",
            "student_config": json.dumps(config.to_diff_dict()),
            "vocab_transform": args.vocab_transform,
            "fold_token_type": args.fold_token_type,
        }
        save(state, dump, metadata)
        if args.save_pretrained:
            save_pretrained(state, config, tokenizer, args.save_pretrained, metadata)
    except OSError as e:  # a full disk, a folder that vanished during the run
        raise InputError(f"could not write {dump} ({e.strerror or e})") from e
    n_params = sum(v.numel() for v in state.values())
    if args.random_init:
        print(
            f"a {config.n_layers}-layer student with its own random weights (seed {FRESH_HEAD_SEED}): no teacher layers"
        )
    else:
        print(f"copied teacher layers {layers} into a {config.n_layers}-layer student")
    if no_head and not args.random_init:
        print("the teacher has no masked-LM head: the student's head is left at random initialisation")
    print(f"{len(state)} tensors, {n_params / 1e6:.1f}M parameters -> {dump}")
    if args.save_pretrained:
        print(f"the student as a model folder -> {args.save_pretrained}")
    return dump


if __name__ == "__main__":
    main()
