"""Build a RoBERTa or GPT-2 student's initial weights from a teacher of its own type (step 5 for
DistilRoBERTa and DistilGPT2; upstream's scripts/extract.py --model_type roberta|gpt2).

    python scripts/extract/student.py --model_type roberta
        # 6 of roberta-base's 12 layers, 0,2,4,7,9,11 (training_configs/distilroberta-base.json)
        # -> serialization_dir/distilroberta-base.from-roberta-base.safetensors
    python scripts/extract/student.py --model_type gpt2
        # 6 of gpt2's 12 blocks (training_configs/distilgpt2.json) -> serialization_dir/distilgpt2.from-gpt2.safetensors
    python scripts/extract/student.py --model_type roberta --model_name M --student_config C --layers 0,5 \\
        --dump_checkpoint init.safetensors

The student has the teacher's architecture with fewer layers, so everything outside the layers is copied as
it is: the embeddings (RoBERTa's position table whole, so its padding_idx + 1 offset is kept; GPT-2's wpe),
the final LayerNorm (GPT-2's ln_f) and the LM head (RoBERTa's dense + LayerNorm + bias; the decoder and GPT-2's
lm_head are tied to the word embeddings and are not stored). The chosen layers are renumbered 0..n-1. Layers
are spread evenly over the teacher by default (round(i * (L - 1) / (n - 1))); --layers chooses them.

Every check runs before anything is written: the student config must be of the teacher's type, with its
widths, vocabulary, positions (and RoBERTa's pad id); the output must be writable. The checkpoint is a
safetensors file whose metadata records the teacher, the layers and the config; train.py's
--student_pretrained_weights loads it strictly.
"""

import argparse
import json
import re
from pathlib import Path

import transformers
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForMaskedLM

from core.errors import InputError, reports_errors
from core.files import check_writable
from core.loading import load_config, load_lm, tied_keys
from scripts.extract.distilbert import parse_layers, save, spread_layers

ROOT = Path(__file__).resolve().parents[2]

# --model_type: (config class, model class, the layers' key prefix, default teacher, default student config,
# the config fields that must equal the teacher's)
TYPES = {
    "roberta": (RobertaConfig, RobertaForMaskedLM, "roberta.encoder.layer.", "roberta-base", "distilroberta-base",
                ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
                 "pad_token_id", "type_vocab_size", "hidden_act", "layer_norm_eps")),
    "gpt2": (GPT2Config, GPT2LMHeadModel, "transformer.h.", "gpt2", "distilgpt2",
             ("n_embd", "n_head", "n_inner", "vocab_size", "n_positions", "activation_function", "layer_norm_epsilon")),
}


def check_fits(model_type, config, teacher_config):
    """The student config must be the teacher's, but for its number of layers."""
    for name in TYPES[model_type][5]:
        s, t = getattr(config, name), getattr(teacher_config, name)
        if s != t:
            raise InputError(f"student {name} {s} differs from the teacher's {t}: layers cannot be copied")


def extract(model_type, teacher, config, layers):
    """The student state dict: the teacher's tensors outside its layers, and `layers` renumbered 0..n-1;
    tied tensors (the LM head's weight, which is the word embeddings) left out."""
    prefix = TYPES[model_type][2]
    check_fits(model_type, config, teacher.config)
    layer_key = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    new_index = {t: s for s, t in enumerate(layers)}
    tied = tied_keys(teacher)
    out = {}
    for key, tensor in teacher.state_dict().items():
        if key in tied:
            continue
        m = layer_key.match(key)
        if m is None:
            out[key] = tensor
        elif int(m.group(1)) in new_index:
            out[f"{prefix}{new_index[int(m.group(1))]}.{m.group(2)}"] = tensor
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(prog="student.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model_type", required=True, choices=list(TYPES), help="the teacher's and the student's type")
    p.add_argument("--model_name", default=None, help="teacher: a hub name or a folder (default: roberta-base / gpt2)")
    p.add_argument("--student_config", default=None,
                   help="student config JSON (default: training_configs/distilroberta-base.json / distilgpt2.json)")
    p.add_argument("--layers", default=None, help="teacher layers to copy, e.g. 0,2,4,7,9,11 (default: spread evenly)")
    p.add_argument("--dump_checkpoint", default=None,
                   help="output file (default: serialization_dir/<config>.from-<teacher>.safetensors)")
    args = p.parse_args(argv)
    transformers.logging.set_verbosity_error()
    config_class, model_class, _, teacher_name, config_name, _ = TYPES[args.model_type]
    name = args.model_name or teacher_name
    config_path = Path(args.student_config or ROOT / "training_configs" / f"{config_name}.json")
    config = load_config(config_class, config_path)
    declared = json.loads(config_path.read_text()).get("model_type", args.model_type)
    if declared != args.model_type:
        raise InputError(f"{config_path} is a {declared} config: --model_type {args.model_type} copies layers between "
                         f"{args.model_type} models")
    dump = Path(args.dump_checkpoint or ROOT / "serialization_dir"
                / f"{config_path.stem}.from-{Path(name.rstrip('/')).name}.safetensors")
    check_writable(dump, "--dump_checkpoint")  # before the teacher is loaded, not after
    teacher, no_head = load_lm(model_class, name, "the teacher")
    if no_head:
        raise InputError(f"the teacher {name} has no LM head (its checkpoint lacks {', '.join(no_head[:3])}): "
                         f"give a {model_class.__name__} checkpoint")
    n_teacher, n_student = teacher.config.num_hidden_layers, config.num_hidden_layers
    layers = parse_layers(args.layers, n_student, n_teacher) if args.layers else spread_layers(n_student, n_teacher)
    state = extract(args.model_type, teacher, config, layers)
    metadata = {"teacher": name, "model_type": args.model_type, "teacher_layers": ",".join(map(str, layers)),
                "student_config": json.dumps(config.to_diff_dict())}
    try:
        save(state, dump, metadata)
    except OSError as e:
        raise InputError(f"could not write {dump} ({e.strerror or e})") from e
    print(f"copied teacher layers {layers} into a {n_student}-layer {args.model_type} student")
    print(f"{len(state)} tensors, {sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters -> {dump}")
    return dump


if __name__ == "__main__":
    main()
