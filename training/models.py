"""The models a run trains and reads: their classes per --student_type / --teacher_type, the student as
train.py builds it, and the plumbing the losses need from HF models (the vocabulary head on chosen rows,
one layer's query / key / value projections)."""

from pathlib import Path

import torch.nn.functional as F
from torch import nn

from core.errors import InputError
from core.loading import load_config, load_pretrained, load_student_weights
from utils import logger


def model_classes(kind):
    """(config class, model class, tokenizer class) per model type; imported lazily."""
    import transformers as T

    return {
        "distilbert": (T.DistilBertConfig, T.DistilBertForMaskedLM, T.DistilBertTokenizer),
        "roberta": (T.RobertaConfig, T.RobertaForMaskedLM, T.RobertaTokenizer),
        "bert": (T.BertConfig, T.BertForMaskedLM, T.BertTokenizer),
        "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, T.GPT2Tokenizer),
        "mpnet": (T.MPNetConfig, T.MPNetForMaskedLM, T.MPNetTokenizer),  # a teacher only
    }[kind]


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


def lm_head_parts(model):
    """The model's language-modelling head as (features, projection): logits = projection(features(hidden)),
    where `projection` is the nn.Linear onto the vocabulary (weight (vocab, dim), bias or None)."""
    if hasattr(model, "vocab_projector"):  # DistilBertForMaskedLM
        return (
            lambda h: model.vocab_layer_norm(model.activation(model.vocab_transform(h))),
            model.vocab_projector,
        )
    if hasattr(model, "cls"):  # BertForMaskedLM
        return model.cls.predictions.transform, model.cls.predictions.decoder
    head = model.lm_head
    if hasattr(head, "decoder"):  # RobertaForMaskedLM
        return (lambda h: head.layer_norm(F.gelu(head.dense(h)))), head.decoder
    return (lambda h: h), head  # GPT2LMHeadModel


class RowsLM(nn.Module):
    """Wraps a HF LM: runs the encoder on the batch and the vocabulary head only at chosen rows.

    forward(input_ids, attention_mask, rows, head_rows=None, features=False) -> (hidden, logits, qkv):
      hidden: last hidden states at `rows` (flat indices into batch x length), shape (len(rows), dim);
      logits: the LM head at the first `head_rows` of those rows (all of them when None); with
      features=True, the head's input to its vocabulary projection instead (see lm_head_parts; FusedKD);
      qkv: with `qkv_layer` (0-based), that layer's (query, key, value), each (batch, length, heads x d),
      from its own projections applied to its input: the relation losses' material. None otherwise.
    Wrapping (rather than calling the model's parts from outside) keeps DDP's hooks on the forward.
    """

    def __init__(self, model, qkv_layer=None):
        super().__init__()
        self.model = model
        self.qkv_layer = qkv_layer

    def forward(self, input_ids, attention_mask, rows, head_rows=None, features=False):
        want_qkv = self.qkv_layer is not None
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_qkv)
        hidden = out.last_hidden_state.flatten(0, 1).index_select(0, rows)
        h = hidden if head_rows is None else hidden[:head_rows]
        to_features, projection = lm_head_parts(self.model)
        logits = to_features(h) if features else projection(to_features(h))
        qkv = None
        if want_qkv:  # the layer's input is hidden_states[layer] (hidden_states[0]: the embeddings' output)
            x = out.hidden_states[self.qkv_layer]
            qkv = tuple(p(x) for p in attention_projections(self.model, self.qkv_layer)[0])
        return hidden, logits, qkv


class FusedPart(nn.Module):
    """Query, key or value of GPT-2's layer `block`: its LayerNorm (GPT-2 normalises before attention) and the
    third `part` of its fused c_attn projection."""

    def __init__(self, block, part):
        super().__init__()
        self.block, self.part, self.out_features = block, part, block.attn.embed_dim

    def forward(self, hidden):
        qkv = self.block.attn.c_attn(self.block.ln_1(hidden))
        return qkv[..., self.part * self.out_features : (self.part + 1) * self.out_features]


def attention_projections(model, layer):
    """((query, key, value) modules that map the hidden states entering layer `layer` (0-based) to its Q, K, V;
    the head count) of a HF BERT, RoBERTa, DistilBERT, MPNet or GPT-2 model."""
    base = model.base_model
    if hasattr(base, "transformer"):  # DistilBERT
        att = base.transformer.layer[layer].attention
        return (att.q_lin, att.k_lin, att.v_lin), att.n_heads
    if hasattr(base, "h"):  # GPT-2: one fused projection after a LayerNorm
        block = base.h[layer]
        return tuple(FusedPart(block, i) for i in range(3)), block.attn.num_heads
    att = base.encoder.layer[layer].attention
    if hasattr(att, "attn"):  # MPNet (its relative position bias is not a projection: not in the relations)
        return (att.attn.q, att.attn.k, att.attn.v), att.attn.num_attention_heads
    return (att.self.query, att.self.key, att.self.value), att.self.num_attention_heads  # BERT, RoBERTa


def hidden_layer_map(n_student, n_teacher):
    """TinyBERT's uniform layer map, as indices into hidden_states: the embeddings to the embeddings, student
    layer m to teacher layer m * N // M (3 of 12: 4, 8, 12)."""
    return [(m, m * n_teacher // n_student) for m in range(n_student + 1)]


def relation_layers(student, teacher, names, params):
    """(student layer, teacher layer, (attention heads, relation heads)) for the relation losses in `names`:
    the student's last layer and the teacher's --teacher_layer (1-based; default its last), as 0-based
    indices, after checking that the two models' heads fit those losses."""
    n_teacher, n_student = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    t_layer = n_teacher if params.teacher_layer is None else params.teacher_layer  # 0 is out of range, not the last
    if not 1 <= t_layer <= n_teacher:
        raise InputError(f"--teacher_layer {t_layer}: the teacher has layers 1 to {n_teacher}")
    (s_query, _, _), s_heads = attention_projections(student, n_student - 1)
    (t_query, _, _), t_heads = attention_projections(teacher, t_layer - 1)
    if "att" in names and s_heads != t_heads:
        raise InputError(
            f"--alpha_att compares attention heads one to one, but the student has {s_heads} and the teacher "
            f"{t_heads}: use --alpha_qq/--alpha_kk/--alpha_vv, whose --relation_heads need not match"
        )
    relation_heads = params.relation_heads or s_heads
    for who, query in (("student", s_query), ("teacher", t_query)):
        if query.out_features % relation_heads:
            raise InputError(
                f"--relation_heads {relation_heads} does not divide the {who}'s attention width {query.out_features}"
            )
    return n_student - 1, t_layer - 1, (s_heads, relation_heads)
