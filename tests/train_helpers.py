"""Tiny models and data files for the training tests: everything built offline from configs, seeded."""

import json
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer, DistilBertConfig

import train
from distiller import Distiller
from training import data_format, train_args
from utils import DistInfo


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
    tokenizer, dataset, token_probs, student, teacher = train.setup(args)
    dist = DistInfo(device=torch.device(device))
    return args, Distiller(args, dataset, token_probs, student, teacher, dist=dist), tokenizer


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
