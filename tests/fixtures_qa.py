"""Fixtures of the question-answering tests (registered in conftest.py's pytest_plugins), each built once per test
module: a tokenizer of single letters, make_qa_data.py's sets from the synthetic articles, a tiny BERT."""

import json

import pytest
from transformers import BertTokenizer

from conftest import run_main, write_bert_vocab
from scripts import make_qa_data
from train_helpers import make_teacher_dir


@pytest.fixture(scope="module")
def letters(tmp_path_factory):
    """A fast WordPiece tokenizer whose words are single letters and 'what'."""
    folder = write_bert_vocab(tmp_path_factory.mktemp("letters") / "tok", ["what"])
    return BertTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def syn_qa(tmp_path_factory, articles):
    """make_qa_data.py's cloze sets (v1.1 and v2.0, one paragraph per context) from the synthetic articles."""
    folder = tmp_path_factory.mktemp("qa_data")
    src = folder / "articles.jsonl"
    src.write_text("".join(json.dumps(a) + "\n" for a in articles), encoding="utf-8")
    for flags, out in (((), "v1"), (("--version_2",), "v2")):
        run_main(make_qa_data.main, "--source", src, "--output_dir", folder / out, "--paragraphs", 1, *flags,
                 check=True)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_dir):
    """A tiny BERT (masked-LM, 64 positions) with the synthetic corpus's tokenizer."""
    folder, _, _ = make_teacher_dir(tmp_path_factory.mktemp("qa_tiny") / "tiny-bert", tokenizer_dir)
    return folder
