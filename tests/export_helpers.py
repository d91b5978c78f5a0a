"""Helpers of the export and serving tests: a tiny random model of each type and head the project trains,
saved with a tokenizer of its own as a run leaves it."""

import torch
import transformers

from conftest import write_bert_vocab
from scripts import export_onnx
from train_helpers import BPE_SPECIALS

WORDS = sorted({w for t in export_onnx.SENTENCES + [q for q, _ in export_onnx.QUESTIONS] for w in t.lower().split()})
HEADS = {"seq": "ForSequenceClassification", "qa": "ForQuestionAnswering", "mlm": "ForMaskedLM"}
CLASSES = {"bert": "Bert", "distilbert": "DistilBert", "roberta": "Roberta", "mpnet": "MPNet", "gpt2": "GPT2"}


def tokenizer_for(kind, folder):
    if kind in ("roberta", "gpt2"):
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(export_onnx.SENTENCES, vocab_size=400, show_progress=False,
                                special_tokens=BPE_SPECIALS[kind])
        folder.mkdir(parents=True, exist_ok=True)
        bpe.save_model(str(folder))
        tok = getattr(transformers, f"{CLASSES[kind]}TokenizerFast").from_pretrained(str(folder))
        if kind == "gpt2":
            tok.pad_token = tok.eos_token
        return tok
    write_bert_vocab(folder, WORDS)
    if kind == "mpnet":  # MPNet's specials in front of the same WordPiece vocabulary
        vocab = (folder / "vocab.txt").read_text().splitlines()
        (folder / "vocab.txt").write_text("\n".join(["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + vocab) + "\n")
        return transformers.MPNetTokenizerFast.from_pretrained(str(folder))
    return transformers.BertTokenizerFast.from_pretrained(str(folder))


def make_model(folder, kind, head, num_labels=2):
    """A tiny random `kind` model with `head`, saved with its tokenizer (as run_glue/run_qa --save_model and a
    finished train.py run leave it)."""
    tok = tokenizer_for(kind, folder)
    size = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=num_labels)
    if kind == "gpt2":
        size |= dict(n_embd=32, n_layer=2, n_head=2, n_positions=128)
    elif kind == "distilbert":
        size |= dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128)
    else:
        size |= dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=130)
    if kind == "roberta":
        size |= dict(type_vocab_size=1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = getattr(transformers, f"{CLASSES[kind]}Config")(**size)
    torch.manual_seed(0)
    model = getattr(transformers, f"{CLASSES[kind]}{HEADS[head]}")(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
