"""A trained model out of PyTorch: ONNX export, ONNX Runtime's optimizer and int8 quantization, and the checks
that decide whether an export is kept (scripts/export_onnx.py) or timed (benchmarks/bench_inference.py).

Only well-kept tools do the work: torch.onnx.export (the TorchScript exporter, whose graphs ONNX Runtime's
transformer optimizer knows how to fuse), onnxruntime.transformers.optimizer (fused attention, LayerNorm, GELU)
and onnxruntime.quantization.quantize_dynamic (int8 weights, activations quantized on the fly). Nothing here
edits a graph by hand.
"""

import inspect
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import InputError

# The heads an export takes, by the suffix of the model's class name: (kind, ONNX output names).
HEADS = {
    "ForSequenceClassification": ("sequence-classification", ("logits",)),
    "ForQuestionAnswering": ("question-answering", ("start_logits", "end_logits")),
    "ForMaskedLM": ("masked-lm", ("logits",)),
}
# The model types the project trains or teaches with; ONNX Runtime's optimizer fuses them as "bert" (GPT-2 as
# "gpt2"). Another type exports unoptimized.
OPTIMIZER_TYPES = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "mpnet": "bert", "gpt2": "gpt2"}
OPSET = 17  # LayerNormalization is a single op from 17 on; ONNX Runtime 1.16+ runs it
TOLERANCE = 1e-4  # the default largest |ONNX - PyTorch| on fp32 outputs (logits) that an export may show


@dataclass(frozen=True)
class Head:
    kind: str  # "sequence-classification", "question-answering", "masked-lm"
    outputs: tuple  # the ONNX output names, in the model's order
    token_level: bool  # outputs have a sequence axis (QA, masked LM): compare real tokens only


def head_of(model_or_config):
    """The Head of a model (or of a config's `architectures`); InputError for one an export does not take."""
    config = getattr(model_or_config, "config", model_or_config)
    names = [type(model_or_config).__name__] if hasattr(model_or_config, "config") else []
    names += list(getattr(config, "architectures", None) or [])
    for name in names:
        for suffix, (kind, outputs) in HEADS.items():
            if name.endswith(suffix):
                return Head(kind, outputs, kind != "sequence-classification")
    shown = ", ".join(names) or "none named in config.json"
    raise InputError(f"unsupported head ({shown}): the export takes a sequence classifier (run_glue.py), a "
                     "question-answering model (run_qa.py) or a masked LM (train.py)")


def input_names(model, tokenizer):
    """The inputs the export feeds: those the tokenizer makes that the model's forward takes (token_type_ids only
    where the model has more than one segment embedding: RoBERTa's single one would be a constant)."""
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in tokenizer.model_input_names if n in accepted]
    if "token_type_ids" in names and getattr(model.config, "type_vocab_size", 2) < 2:
        names.remove("token_type_ids")
    return names


def encode(tokenizer, texts, names, max_length):
    """Tokenized `texts` ([firsts] or [firsts, seconds]) as int64 arrays of `names`, padded to the longest."""
    enc = tokenizer(*texts, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    return {n: enc[n].astype(np.int64) for n in names}


def export(model, tokenizer, path, max_length=128):
    """Write `model` (a transformers model, eval mode, eager attention) to `path` as ONNX with dynamic batch and
    sequence axes. Returns the input names."""
    head = head_of(model)
    names = input_names(model, tokenizer)
    sample = encode(tokenizer, [["a first sentence to trace", "and a second, longer one, with padding"]], names,
                    max_length)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes |= {o: ({0: "batch", 1: "sequence"} if head.token_level else {0: "batch"}) for o in head.outputs}

    class Outputs(torch.nn.Module):  # keyword inputs in, a tuple of the head's outputs out
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            out = self.inner(**dict(zip(names, args)), return_dict=True)
            return tuple(out[o] for o in head.outputs)

    # The wrapper is made in eval mode: the exporter puts a module back in the mode it found it in, and a wrapper
    # left in training mode would switch the model's dropout on for everything after the export.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(Outputs(model).eval(), tuple(torch.from_numpy(sample[n]) for n in names), str(path),
                          input_names=names, output_names=list(head.outputs), dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    return names


def optimize(path, out, config):
    """ONNX Runtime's transformer optimizer on `path`, written to `out`: (True, fused operator counts) or
    (False, why) where the model type has no fusion rules or the optimizer fails (the export stays as it is)."""
    model_type = OPTIMIZER_TYPES.get(config.model_type)
    if model_type is None:
        return False, f"no fusion rules for model type {config.model_type!r}"
    from onnxruntime.transformers import optimizer

    logging.disable(logging.INFO)  # the optimizer logs every fusion it makes at INFO: the counts are returned
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = optimizer.optimize_model(str(path), model_type=model_type, num_heads=config.num_attention_heads,
                                           hidden_size=config.hidden_size, opt_level=1)
        opt.save_model_to_file(str(out))
    except Exception as e:  # the optimizer's own failure: the plain export is still a correct model
        return False, f"the optimizer failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        logging.disable(logging.NOTSET)
    return True, {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def quantize_int8(path, out, per_channel=False):
    """ONNX Runtime's dynamic quantization: int8 weights, activations quantized per batch at run time. Per
    channel: a scale for each output column of a weight instead of one per matrix (more accurate, slower:
    docs/deploy.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The fused operators (Attention, SkipLayerNormalization) are outside ONNX's shape inference: their outputs'
    # type is float32, which the quantizer must be told.
    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def session(path, threads=None):
    """An ONNX Runtime CPU session; `threads` intra-op threads (None: ONNX Runtime's default, every core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the optimizer's notes are not the user's business
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def batches(n, size):
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def run_onnx(sess, tokenizer, texts, names, max_length, batch_size=32):
    """The ONNX session's outputs on `texts`, a list per output name of per-row arrays cut to each row's real
    length on token-level outputs, with the attention masks."""
    outputs, masks = {o.name: [] for o in sess.get_outputs()}, []
    for rows in batches(len(texts[0]), batch_size):
        feed = encode(tokenizer, [[t[i] for i in rows] for t in texts], names, max_length)
        for name, value in zip(outputs, sess.run(None, feed)):
            outputs[name].extend(value)
        masks.extend(feed.get("attention_mask", np.ones_like(feed["input_ids"])))
    return outputs, masks


@torch.no_grad()
def run_torch(model, tokenizer, texts, names, outputs, max_length, batch_size=32):
    """PyTorch's outputs on `texts`, shaped as run_onnx's."""
    got = {o: [] for o in outputs}
    for rows in batches(len(texts[0]), batch_size):
        feed = encode(tokenizer, [[t[i] for i in rows] for t in texts], names, max_length)
        out = model(**{n: torch.from_numpy(v) for n, v in feed.items()}, return_dict=True)
        for o in outputs:
            got[o].extend(out[o].float().numpy())
    return got


def largest_difference(a, b, masks, token_level):
    """The largest |a - b| over every output and row, on real tokens only where the outputs are per token."""
    worst = 0.0
    for name in a:
        for i, (x, y) in enumerate(zip(a[name], b[name])):
            if token_level:
                keep = masks[i].astype(bool)
                x, y = x[: len(keep)][keep], y[: len(keep)][keep]
            worst = max(worst, float(np.max(np.abs(x - y))) if np.size(x) else 0.0)
    return worst


def argmax_agreement(a, b, masks, token_level):
    """The share of predictions (argmax of each output, per row or per real token) that `a` and `b` agree on."""
    same = total = 0
    for name in a:
        for i, (x, y) in enumerate(zip(a[name], b[name])):
            if token_level:
                keep = masks[i].astype(bool)
                x, y = x[: len(keep)][keep], y[: len(keep)][keep]
                if name in ("start_logits", "end_logits"):  # one position per row
                    x, y = x[None], y[None]
            same += int(np.sum(np.argmax(x, -1) == np.argmax(y, -1)))
            total += int(np.size(np.argmax(x, -1)))
    return same / max(total, 1)
