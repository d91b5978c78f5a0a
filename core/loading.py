"""Loading models, tokenizers and weights, with errors a user can act on.

- `load_pretrained()`, `load_tokenizer()`: transformers' loaders with one-line errors (a missing folder, a
  damaged .safetensors file, an unreachable hub name, a train.py run folder that has not finished);
  `load_lm()` also names the LM-head weights a checkpoint lacks (an encoder-only checkpoint, whose head would
  be random).
- `load_student_weights()`: strict loading of a student initialisation checkpoint: a missing or unexpected
  key, or a layer count that does not match the config, is an error that says which.
- `model_input_limit()`: the longest input a tokenizer and models all take.
"""

import json
import logging
import re
from pathlib import Path

import torch

from core.errors import InputError, first_line

logger = logging.getLogger("distillation")  # configured by utils.py

def missing_local_path(name):
    """True when `name` is meant as a local path but nothing is there.

    A hub id is `name` or `namespace/name`. Anything absolute, starting with ./ ../ ~, with more than one
    slash, or whose first part is an existing folder (`demo_run/teacher`) is a path: transformers would
    answer a missing one with a confusing "Repo id must be in the form ..." or a network error.
    """
    text = str(name)
    path = Path(text).expanduser()
    if path.exists():
        return False
    if path.is_absolute() or text.startswith(("./", "../", "~", ".\\", "..\\")):
        return True
    parts = Path(text).parts
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


# ----------------------------------------------------------------------------------------------------------
# Loading models and tokenizers with errors a user can act on


# Models whose position ids start after the padding id (padding_idx + 1 .. max_position_embeddings - 1): their
# longest input is max_position_embeddings - pad_token_id - 1 (RoBERTa's 514 positions take 512 tokens).
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet")


def usable_positions(config):
    """The longest input a model config's position embeddings take (None: no limit recorded)."""
    n = getattr(config, "max_position_embeddings", None)  # GPT-2's n_positions answers to this name too
    if n and getattr(config, "model_type", None) in OFFSET_POSITIONS:
        n -= (config.pad_token_id or 0) + 1
    return n


def model_input_limit(tokenizer, *configs):
    """The longest input every model and the tokenizer accept: the smallest usable_positions() and the
    tokenizer's model_max_length (tokenizers without a limit report ~1e30)."""
    limits = [n for n in map(usable_positions, configs) if n]
    if tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return min(limits)


def split_name(spec):
    """'NAME=PATH' -> (NAME, PATH); 'PATH' (or a path that itself holds '=') -> ("", PATH): how the scripts'
    --model / --run / results arguments name their rows."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        return name, path
    return "", spec


def _load_failure(what, name, e):
    """One line for a failed from_pretrained: what was being loaded, from where, and why."""
    from safetensors import SafetensorError

    first = first_line(e)
    if isinstance(e, SafetensorError):
        return InputError(f"cannot load {what} {name}: a .safetensors file in it is damaged or truncated ({first})")
    return InputError(f"cannot load {what} {name!r}: {first}")


RUN_CHECKPOINT = "checkpoint.pth"  # train.py's resumable state in a run folder (checkpoint.CHECKPOINT)


def _check_local(what, name):
    if missing_local_path(name):
        raise InputError(f"{what} {name} does not exist: check the path (or give a hub name)")


def check_model_folder(what, name):
    """A local folder must hold a model (config.json); a train.py run that has not finished holds only its
    checkpoint, and transformers would answer with "Unrecognized model": say what it is."""
    folder = Path(name)
    if folder.is_dir() and not (folder / "config.json").is_file():
        hint = (
            "it is a train.py run that has not finished: the model is written at its end (or --resume it)"
            if (folder / RUN_CHECKPOINT).is_file()
            else "no config.json there"
        )
        raise InputError(f"cannot load {what} {name}: {hint}")


def load_pretrained(model_class, name, what, **kwargs):
    """`model_class.from_pretrained(name)`; InputError with one line when the folder is missing, a weights
    file is damaged, or the hub cannot give it."""
    from safetensors import SafetensorError

    _check_local(what, name)
    check_model_folder(what, name)
    try:
        return model_class.from_pretrained(name, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        raise _load_failure(what, name, e) from None


TYPE_NAMES = {"bert": "BERT", "roberta": "RoBERTa", "gpt2": "GPT-2", "distilbert": "DistilBERT"}


def load_lm(model_class, name, what, **kwargs):
    """load_pretrained() of a language model: (model, the names of the LM-head weights its checkpoint lacks).

    A checkpoint of the encoder alone (a saved BertModel: sentence-embedding models, fine-tuned encoders)
    loads into an LM class with no error, its vocabulary head filled with random weights; only transformers'
    load report, which the scripts silence, says so. Those weights are the keys outside the base model that
    from_pretrained reports missing; tied ones (the decoder shares the word embeddings) do not count.

    A checkpoint of another architecture loads too, with every weight random (a RoBERTa folder into GPT-2's
    class whose config fields happen to fit): refused here, by the checkpoint's own model_type and by any
    weight of the base model that the checkpoint did not fill."""
    config_class = getattr(model_class, "config_class", None)  # None: an Auto class, which takes any type
    expected = config_class.model_type if config_class else None
    declared = _declared_model_type(name) if expected else None
    if declared is not None and declared != expected:
        raise InputError(f"{what} {name} is a {TYPE_NAMES.get(declared, declared)} checkpoint (model_type "
                         f"{declared!r}), not {TYPE_NAMES.get(expected, expected)}: give a {expected} checkpoint, "
                         "or the type that matches it")
    model, info = load_pretrained(model_class, name, what, output_loading_info=True, **kwargs)
    prefix, tied = model.base_model_prefix + ".", tied_keys(model)
    missing = [k for k in info["missing_keys"] if k not in tied]
    unfilled = sorted(k for k in missing if k.startswith(prefix)) + sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", []))
    if unfilled:
        raise InputError(f"{what} {name} did not fill {len(unfilled)} of {model_class.__name__}'s weights (e.g. "
                         f"{unfilled[0]}): it is not a checkpoint of this architecture, so those would be "
                         "random")
    return model, sorted(k for k in missing if not k.startswith(prefix))


def _declared_model_type(name):
    """The model_type in a checkpoint's config.json (None where it says none or cannot be read here)."""
    from transformers import AutoConfig

    config = Path(name) / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            return None
    try:
        return AutoConfig.from_pretrained(name).model_type
    except (OSError, ValueError, KeyError):
        return None


def load_masked_lm(name, path):
    """A masked LM to measure or show its predictions: one without its head is refused, since its figures
    would be those of random weights (~0% top-1), not of the model."""
    from transformers import AutoModelForMaskedLM

    model, no_head = load_lm(AutoModelForMaskedLM, path, "the masked LM")
    if no_head:
        raise InputError(
            f"model {name} ({path}) has no masked-LM head (its checkpoint lacks {', '.join(no_head[:3])}"
            f"{', ...' if len(no_head) > 3 else ''}), so its predictions would be random: leave it out"
        )
    return model.eval()


def load_config(config_class, path):
    """A model config from a JSON file; InputError with one line when it is missing or not such a config."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {path} does not exist (see training_configs/)")
    try:
        return config_class.from_json_file(str(path))
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{path} is not a readable {config_class.__name__} JSON file ({first_line(e)})") from None


def load_tokenizer(tokenizer_class, name, what="tokenizer"):
    """`tokenizer_class.from_pretrained(name)`, refusing what transformers 5 returns for a folder without
    tokenizer files: an empty tokenizer that knows only its special tokens."""
    _check_local(what, name)
    if (Path(name) / RUN_CHECKPOINT).is_file():
        check_model_folder(what, name)  # an unfinished train.py run: say so, not "no vocab.txt"
    local = Path(name).exists()
    remedy = "give a folder with vocab.txt or tokenizer.json" if local else (
        "it is not a local folder, and the model hub does not have it or cannot be reached: check the spelling "
        "and your network, or give a local folder with vocab.txt or tokenizer.json")
    try:
        tokenizer = tokenizer_class.from_pretrained(name)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise InputError(f"cannot load {what} {name!r} ({first_line(e)}): {remedy}") from None
    if len(tokenizer) <= len(tokenizer.all_special_tokens):  # transformers 5's answer when it finds no files
        why = " (no vocab.txt or tokenizer.json there)" if local else ""
        raise InputError(f"cannot load {what} {name!r}{why}: {remedy}")
    return tokenizer


# ----------------------------------------------------------------------------------------------------------
# Student initialisation checkpoints (written by scripts/extract/distilbert.py)

# A transformer layer's keys in a DistilBERT, RoBERTa (or BERT) and GPT-2 student
_LAYER_KEY = re.compile(
    r"^(?:distilbert\.transformer\.layer|roberta\.encoder\.layer|bert\.encoder\.layer|transformer\.h)\.(\d+)\."
)
# The MLM head's transform is optional in upstream's extraction (`--vocab_transform`): a checkpoint may
# leave these out, and they then keep the student's random initialisation.
OPTIONAL_KEYS = ("vocab_transform.weight", "vocab_transform.bias", "vocab_layer_norm.weight", "vocab_layer_norm.bias")


def read_weights_file(path):
    """(state dict, metadata) from a .safetensors file or a torch .pth/.bin state dict. Never runs code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"student weights {path} do not exist: run scripts/extract/distilbert.py first")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except SafetensorError as e:
            raise InputError(
                f"{path} is damaged or truncated ({e}): re-create it with scripts/extract/distilbert.py"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path} is not a readable weights file ({type(e).__name__}: {first_line(e)})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a state dict of tensors")
    return state, {}


def tied_keys(model):
    """Keys of `model.state_dict()` whose tensor is shared with an earlier key (e.g. the tied decoder)."""
    seen, tied = {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            tied.add(name)
        else:
            seen[ptr] = name
    return tied


def load_student_weights(model, path):
    """Load a student initialisation into `model`, strictly.

    Errors (InputError) name what does not fit: a different number of transformer layers than the config,
    keys the model does not have, keys the checkpoint lacks, or tensors of another shape. Tied weights
    (the vocab projector shares the word embeddings) may be present or not; the MLM head's transform may be
    absent (upstream's default extraction leaves it out) and then keeps its random initialisation.
    Returns the list of optional keys that were absent.
    """
    state, meta = read_weights_file(path)
    model_state = model.state_dict()
    config = model.config

    n_layers_ckpt = len({int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))})
    n_layers_cfg = config.num_hidden_layers  # DistilBERT's n_layers, GPT-2's n_layer
    if n_layers_ckpt != n_layers_cfg:
        raise InputError(
            f"{path} holds {n_layers_ckpt} transformer layers but the student config has {n_layers_cfg}: "
            f"extract with the same --student_config, or pick the matching config"
        )
    tied = tied_keys(model)
    unexpected = sorted(set(state) - set(model_state))
    missing = sorted(set(model_state) - set(state) - tied - set(OPTIONAL_KEYS))
    if unexpected:
        raise InputError(
            f"{path} has {len(unexpected)} key(s) the student does not have, e.g. {unexpected[:3]}: "
            f"it was not made for this student config"
        )
    if missing:
        raise InputError(
            f"{path} lacks {len(missing)} key(s) the student needs, e.g. {missing[:3]}: "
            f"it was not made for this student config"
        )
    for k, v in state.items():
        if v.shape != model_state[k].shape:
            raise InputError(
                f"{path}: {k} has shape {tuple(v.shape)} but the student config needs {tuple(model_state[k].shape)}"
            )
    # Tied keys in the checkpoint must agree with the tensor they are tied to; load only the untied ones.
    to_load = {k: v for k, v in state.items() if k not in tied}
    result = model.load_state_dict(to_load, strict=False)
    absent_optional = [k for k in OPTIONAL_KEYS if k in model_state and k not in state]
    assert not result.unexpected_keys, result.unexpected_keys
    if absent_optional:
        logger.warning(
            f"{path} has no MLM-head transform ({', '.join(absent_optional)}): kept at random init "
            f"(scripts/extract/distilbert.py copies it by default)"
        )
    origin = f" (teacher {meta['teacher']}, layers {meta.get('teacher_layers')})" if "teacher" in meta else ""
    logger.info(f"student initialised from {path}{origin}")
    return absent_optional
