"""Fixtures of the training and data tests (registered in conftest.py's pytest_plugins), each built once per test
module: a text corpus from the synthetic articles, and a tiny BERT teacher."""

import pytest

from train_helpers import make_teacher_dir, sentences


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, articles):
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "dump.txt").write_text("\n".join(sentences(articles[:60])) + "\n")
    return folder / "dump.txt"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir):
    return make_teacher_dir(tmp_path_factory.mktemp("teacher") / "tiny-bert", tokenizer_dir)[0]
