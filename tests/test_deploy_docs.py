"""docs/deploy.md's serving code, run as written on real exports of tiny models: text in, the label or the
answer out, equal to what the PyTorch model says."""

import contextlib
import io
import re

import pytest
import torch
import transformers

from conftest import ROOT, run_main
from export_helpers import make_model
from scripts import export_onnx

pytest.importorskip("onnxruntime")


def block(marker):
    """The ```python block of docs/deploy.md whose first line is `# <marker>`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    return next(b for b in blocks if b.startswith(f"# {marker}\n"))


def run_block(code, folder):
    code, n = re.subn(r'^folder = ".*"$', f"folder = {str(folder)!r}", code, flags=re.M)
    assert n == 1
    scope, out = {}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/deploy.md", "exec"), scope)
    return scope, out.getvalue()


def test_the_classifier_snippet_gives_pytorchs_labels(tmp_path):
    src = make_model(tmp_path / "model", "bert", "seq")
    with torch.no_grad():  # a head that separates the two sentences below, so the label is not a coin toss
        model = transformers.AutoModelForSequenceClassification.from_pretrained(src)
        model.classifier.weight.mul_(100)
        model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
        model.save_pretrained(src)
    run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", tmp_path / "onnx", "--quantize", "int8",
             check=True)
    scope, printed = run_block(block("serve a classifier"), tmp_path / "onnx")
    texts = ["the film is a charming journey.", "the script lets them down.", "paris is the capital."]
    tok = transformers.AutoTokenizer.from_pretrained(src)
    with torch.no_grad():
        ids = model.eval()(**tok(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    assert scope["classify"](texts) == [model.config.id2label[i] for i in ids]
    assert printed.startswith("[") and set(eval(printed)) <= {"negative", "positive"}


def test_the_qa_snippet_answers_with_the_best_span_in_the_context(tmp_path):
    src = make_model(tmp_path / "model", "bert", "qa")
    run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", tmp_path / "onnx", check=True)
    scope, printed = run_block(block("serve a question-answering model"), tmp_path / "onnx")
    question, context = export_onnx.QUESTIONS[0]
    got = scope["answer"](question, context)
    # the same span from PyTorch's logits, searched by brute force
    tok = transformers.AutoTokenizer.from_pretrained(src)
    enc = tok(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0]
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(src).eval()
    with torch.no_grad():
        out = model(**enc)
    inside = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]
    s = max(inside, key=lambda i: out.start_logits[0, i].item())
    e = max((i for i in inside if s <= i < s + 30), key=lambda i: out.end_logits[0, i].item())
    assert got == context[offsets[s][0] : offsets[e][1]] and got in context
    assert printed.strip() in context and torch.isfinite(out.start_logits).all()
