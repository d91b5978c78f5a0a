"""Tiny models and data files for the training tests: everything built offline from configs, seeded."""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizer,
    DistilBertConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizerFast,
)

import train
from distiller import Distiller
from training import data_format, train_args
from training.losses import kd_loss
from utils import DistInfo

# RoBERTa's ids for its specials (pad 1, the padding_idx its positions are offset by); GPT-2 has one token
BPE_SPECIALS = {"roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "gpt2": ["<|endoftext|>"]}


def tiny_bert_config(vocab_size, layers=4, hidden=32, heads=2, ffn=64, max_pos=64):
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max_pos,
    )


def tiny_student_config(vocab_size, layers=2, hidden=32, heads=2, ffn=64, max_pos=64):
    return DistilBertConfig(
        vocab_size=vocab_size,
        dim=hidden,
        n_layers=layers,
        n_heads=heads,
        hidden_dim=ffn,
        max_position_embeddings=max_pos,
        pad_token_id=0,
    )


def write_student_config(path, vocab_size, **kw):
    path = Path(path)
    path.write_text(json.dumps(tiny_student_config(vocab_size, **kw).to_dict(), indent=2))
    return path


def make_teacher_dir(folder, tokenizer_dir, seed=0, **kw):
    """A randomly initialised tiny BertForMaskedLM saved with save_pretrained, with the tokenizer beside it."""
    folder = Path(folder)
    tok = BertTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = BertForMaskedLM(tiny_bert_config(len(tok), **kw)).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok


def make_headless_teacher_dir(folder, tokenizer_dir, seed=0, **kw):
    """A tiny BertModel, the encoder alone with no masked-LM head (like sentence-embedding models and fine-tuned
    encoders), saved with save_pretrained, with the tokenizer beside it."""
    folder = Path(folder)
    tok = BertTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = BertModel(tiny_bert_config(len(tok), **kw)).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok


def make_bpe_teacher(folder, kind, texts, layers=4):
    """A tiny random teacher of `kind` with a byte-level BPE tokenizer trained on `texts`, saved together."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, show_progress=False, special_tokens=BPE_SPECIALS[kind])
    folder.mkdir(parents=True)
    bpe.save_model(str(folder))
    torch.manual_seed(0)
    if kind == "roberta":
        tok = RobertaTokenizerFast.from_pretrained(str(folder))
        config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               type_vocab_size=1)
        model = RobertaForMaskedLM(config)
    else:
        tok = GPT2TokenizerFast.from_pretrained(str(folder))
        config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=layers, n_head=2, n_positions=128,
                            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(config)
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def sentences(articles):
    """One training line per sentence-ish chunk of each paragraph (paragraphs are long enough to matter)."""
    for a in articles:
        for para in a["text"].split("\n\n"):
            para = para.strip()
            if len(para.split()) >= 4:
                yield para


def write_data(folder, tokenizer_dir, articles, name="tiny-bert", max_lines=None):
    """binarized_text.<name>.pickle and token_counts.<name>.pickle for `articles`, with full metadata."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizer.from_pretrained(str(tokenizer_dir))
    lines = list(sentences(articles))[:max_lines]
    seqs = [np.asarray(tok(line)["input_ids"], dtype=np.uint16) for line in lines]
    token_ids = np.concatenate(seqs)
    offsets = data_format.offsets_from_lengths([len(s) for s in seqs])
    special = {
        "cls_token": tok.cls_token_id,
        "sep_token": tok.sep_token_id,
        "pad_token": tok.pad_token_id,
        "mask_token": tok.mask_token_id,
        "unk_token": tok.unk_token_id,
    }
    meta = {
        "tokenizer_type": "bert",
        "tokenizer_name": str(tokenizer_dir),
        "vocab_size": len(tok),
        "special_token_ids": special,
        "min_tokens": 0,
        "seed": 0,
    }
    data_file = folder / f"binarized_text.{name}.pickle"
    counts_file = folder / f"token_counts.{name}.pickle"
    data_format.save_binarized(data_file, token_ids, offsets, meta)
    counts = np.bincount(token_ids.astype(np.int64), minlength=len(tok))
    data_format.save_token_counts(counts_file, counts, {"tokenizer_name": str(tokenizer_dir)})
    return data_file, counts_file


def tiny_run_files(folder, tokenizer_dir, articles, student_layers=2):
    """Data files, a tiny teacher (named tiny-bert, like the data) and a student config in `folder`.

    Returns the train.py arguments that use them (without --dump_path).
    """
    folder = Path(folder)
    data_file, counts_file = write_data(folder / "data", tokenizer_dir, articles)
    teacher_dir, _, tok = make_teacher_dir(folder / "teacher" / "tiny-bert", tokenizer_dir)
    config = write_student_config(folder / "student.json", len(tok), layers=student_layers)
    return [
        "--data_file",
        str(data_file),
        "--token_counts",
        str(counts_file),
        "--student_type",
        "distilbert",
        "--student_config",
        str(config),
        "--teacher_type",
        "bert",
        "--teacher_name",
        str(teacher_dir),
        "--mlm",
        "--batch_size",
        "16",
        "--gradient_accumulation_steps",
        "2",
        "--n_epoch",
        "1",
        "--log_interval",
        "5",
        "--checkpoint_interval",
        "1000",
        "--num_workers",
        "0",
        "--n_gpu",
        "0",
    ]


def build_distiller(argv, device="cpu"):
    """train.py's setup, in-process, without writing anything: (args, distiller, tokenizer)."""

    if "--dump_path" not in argv:
        argv = [*argv, "--dump_path", str(Path(argv[argv.index("--student_config") + 1]).parent / "not-written")]
    args = train_args.parse_args(argv)
    train_args.sanity_checks(args)
    tokenizer, dataset, token_probs, student, teacher, teacher_ids = train.setup(args)
    dist = DistInfo(device=torch.device(device))
    return args, Distiller(args, dataset, token_probs, student, teacher, dist=dist, teacher_ids=teacher_ids), tokenizer


def read_metrics(dump_path):
    """metrics.jsonl as {iteration: record}; a resumed run's records replace the killed run's."""
    records = {}
    for line in (Path(dump_path) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[r["iter"]] = r
    return records


def with_args(argv, **kw):
    """Replace or add `--name value` options (`name=True` adds a bare flag)."""
    argv = list(argv)
    for name, value in kw.items():
        flag = f"--{name}"
        if value is True:
            argv.append(flag)
        elif flag in argv:
            argv[argv.index(flag) + 1] = str(value)
        else:
            argv += [flag, str(value)]
    return argv


def head_problem(seed, n=37, d=16, vocab=300, n_lm=10, bias=True):
    """Random student features / head (trainable) and teacher features / head, plus LM targets for the first
    n_lm rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, requires_grad=True)
    w = torch.randn(vocab, d, generator=g).mul_(0.3).requires_grad_()
    b = torch.randn(vocab, generator=g).requires_grad_() if bias else None
    tx, tb = torch.randn(n, d, generator=g), torch.randn(vocab, generator=g)
    tw = torch.randn(vocab, d, generator=g) * 0.3
    targets = torch.randint(vocab, (n_lm,), generator=g)
    return x, w, b, tx, tw, tb, targets


def autograd_losses(x, w, b, tx, tw, tb, targets, temperature, alpha_kd, alpha_lm):
    """The fused KD's losses in plain autograd, on a head_problem: (alpha_kd * kd + alpha_lm * lm, kd, lm)."""
    s = F.linear(x, w, b)
    kd = kd_loss(s, F.linear(tx, tw, tb), temperature)
    lm = F.cross_entropy(s[: len(targets)], targets) if len(targets) else torch.zeros(())
    return alpha_kd * kd + alpha_lm * lm, kd, lm
