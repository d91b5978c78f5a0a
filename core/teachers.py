"""The teacher, loaded and checked one way for every script: train.py's language model, run_glue.py's
sequence classifier and run_qa.py's span predictor.

`load_frozen` gives the teacher frozen (eval mode, no gradients) after core.loading.load_lm's checks (a checkpoint of
this architecture, every weight of the base model filled), and refuses a checkpoint without the head the
script needs (an encoder not yet fine-tuned) in one line that says how to get one. `check_width` is the one
check of the losses that compare hidden states. `tokenization_differs` and `piece_map` say how a teacher
reads the student's rows: its input ids as they are, the same word pieces under its own ids (mapped), or only
its own tokenization of the text.
"""

import torch

from core.errors import InputError
from core.loading import load_lm


def load_frozen(model_class, path, needs=None):
    """(the frozen teacher, the names of the head weights its checkpoint lacks). `needs`: (what the teacher must
    be, how to get one), for scripts that cannot work without the head `model_class` adds; without it the
    caller decides (train.py runs its head-free losses)."""
    model, no_head = load_lm(model_class, path, "the teacher")
    if no_head and needs:
        kind = ", ".join(model.config.architectures or ["an encoder"])
        raise InputError(f"the teacher {path} is not {needs[0]} ({kind}; it lacks {no_head[0]}): {needs[1]}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), no_head


def check_width(student_config, teacher_config, why):
    """The losses that compare hidden states (`why` names them and what to do instead) need equal widths."""
    s, t = student_config.hidden_size, teacher_config.hidden_size  # every config maps it (DistilBERT's `dim`)
    if s != t:
        raise InputError(f"the student's hidden size {s} differs from the teacher's {t}: {why}")


def token_ids(tokenizer, text):
    """The ids of one row: a text, or a (text,) or (text, text) tuple (a sentence pair)."""
    return tokenizer(*text)["input_ids"] if isinstance(text, tuple) else tokenizer(text)["input_ids"]


def tokenization_differs(student_tokenizer, teacher_tokenizer, texts):
    """Why the teacher cannot read the student's input ids (None: it can): another vocabulary, or the same
    vocabulary splitting the task's own text otherwise (lower-casing, accents, special tokens)."""
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab != t_vocab:
        differ = sorted(set(s_vocab.items()) ^ set(t_vocab.items()), key=str)
        return f"another vocabulary ({len(t_vocab):,} ids against {len(s_vocab):,}; e.g. {differ[0][0]!r})"
    for text in texts:
        if token_ids(student_tokenizer, text) != token_ids(teacher_tokenizer, text):
            return f"the same vocabulary, splitting {str(text)[:40]!r} otherwise"
    return None


SPECIAL_ROLES = ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token")


def piece_map(student_tokenizer, teacher_tokenizer, texts):
    """(a LongTensor taking each student id to the teacher's id of the same word piece, None), when the two
    tokenizers split every row of `texts` into the same pieces at the same positions under other ids (all-mpnet-
    base-v2's vocabulary is bert-base-uncased's after four special ids; special tokens map by their role: [CLS]
    to <s>, [SEP] to </s>, ...); else (None, why not: the first row that splits otherwise, or a piece one of
    them lacks). Every student piece must be the teacher's, and the teacher may have no piece more that its
    tokenizer can produce (a longer piece would split some words otherwise than the rows checked show)."""
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    roles = {getattr(student_tokenizer, r): getattr(teacher_tokenizer, r) for r in SPECIAL_ROLES
             if getattr(student_tokenizer, r, None) and getattr(teacher_tokenizer, r, None)}
    table = torch.full((max(s_vocab.values()) + 1,), teacher_tokenizer.unk_token_id, dtype=torch.long)
    for piece, i in s_vocab.items():
        table[i] = t_vocab.get(roles.get(piece, piece), teacher_tokenizer.unk_token_id)
    for n, text in enumerate(texts):
        s_ids, t_ids = token_ids(student_tokenizer, text), token_ids(teacher_tokenizer, text)
        if len(s_ids) != len(t_ids) or table[s_ids].tolist() != t_ids:
            pair = " (a sentence pair: the teacher separates its two texts otherwise)" if len(s_ids) != len(
                t_ids) and isinstance(text, tuple) and len(text) == 2 else ""
            return None, f"row {n + 1} ({str(text)[:60]!r}) splits into other pieces or positions{pair}"
    missing = sorted(p for p in s_vocab if roles.get(p, p) not in t_vocab)
    if missing:
        return None, f"the teacher has no piece {missing[0]!r} ({len(missing):,} of the student's pieces are not its)"
    # its special and added tokens are matched as wholes, never a word piece (all-mpnet-base-v2 keeps "<unk>"
    # beside BERT's "[UNK]", its unk_token)
    added = {t.content for t in getattr(teacher_tokenizer, "added_tokens_decoder", {}).values()}
    specials = set(teacher_tokenizer.all_special_tokens) | set(roles.values()) | added
    more = sorted(p for p in t_vocab if p not in s_vocab and p not in specials and
                  teacher_tokenizer(p, add_special_tokens=False)["input_ids"] == [t_vocab[p]])
    if more:
        return None, f"the teacher has a piece the student lacks, {more[0]!r}: it splits some words otherwise"
    return table, None
