"""scripts/export_onnx.py on tiny models of every type and head the project trains: the export matches PyTorch
(checked by the script, and again here from the written folder alone), int8 agreement is computed and
recorded, dev scores are run_glue.py's / run_qa.py's metrics on ONNX Runtime's outputs, and a refused export
or bad input leaves nothing behind."""

import json

import numpy as np
import onnx
import pytest
import torch
import transformers
from transformers import AutoTokenizer

from conftest import input_error, run_main
from core import deploy
from export_helpers import make_model, tokenizer_for
from glue_helpers import GLUE_DATA
from scripts import export_onnx
from tasks import glue, qa

pytest.importorskip("onnxruntime")

CASES = [("bert", "seq"), ("distilbert", "seq"), ("roberta", "seq"), ("mpnet", "seq"), ("gpt2", "seq"),
         ("bert", "qa"), ("roberta", "qa"), ("distilbert", "mlm"), ("bert", "mlm")]


@pytest.mark.parametrize("kind, head", CASES)
def test_the_export_matches_pytorch_and_loads_on_its_own(tmp_path, kind, head):
    src = make_model(tmp_path / "model", kind, head)
    out = tmp_path / "onnx"
    proc = run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", out, "--quantize", "int8",
                    check=True)
    record = json.loads((out / "export.json").read_text())
    assert record["model_type"] == kind and record["head"] == deploy.head_of(
        transformers.AutoConfig.from_pretrained(src)).kind
    assert 0 <= record["parity"]["largest_difference"] <= 1e-4 and f"{record['parity']['largest_difference']:.2e}" in (
        proc.stdout)
    assert 0 <= record["int8"]["argmax_agreement_with_fp32"] <= 1 and record["int8"]["rows"] > 0
    assert {"model.onnx", "model.int8.onnx", "config.json", "export.json"} <= {p.name for p in out.iterdir()}
    assert record["optimized"] == (record["fused_operators"] is not None)
    assert [p.name for p in tmp_path.glob(".onnx*")] == [".onnx.lock"]  # no staging or aside folder left
    # The folder alone: its tokenizer and model.onnx give PyTorch's outputs on new text.
    tok = AutoTokenizer.from_pretrained(out)
    model = getattr(transformers, export_onnx.MODEL_CLASSES[record["head"]]).from_pretrained(src).eval()
    texts = [["the capital of the river city", "a film"]]
    if head == "qa":
        texts = [["what is the capital?", "who scored?"], ["Paris is the capital.", "He scored twice in the match."]]
    got, masks = deploy.run_onnx(deploy.session(out / "model.onnx", threads=1), tok, texts, record["inputs"], 64)
    ref = deploy.run_torch(model, tok, texts, record["inputs"], record["outputs"], 64)
    assert deploy.largest_difference(got, ref, masks, head != "seq") < 1e-4


def test_an_export_over_the_tolerance_is_refused_and_the_old_one_stays(tmp_path):
    src = make_model(tmp_path / "model", "bert", "seq")
    out = tmp_path / "onnx"
    run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", out, check=True)
    before = (out / "model.onnx").read_bytes()
    proc = run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", out, "--overwrite_output_dir",
                    "--tolerance", "1e-30", "--quantize", "int8")
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("export_onnx.py: error: the ONNX model's outputs differ from PyTorch's by ")
    assert line.endswith("over --tolerance 1e-30: nothing was written")
    assert (out / "model.onnx").read_bytes() == before and not (out / "model.int8.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".onnx.lock", "model", "onnx"]
    fresh = tmp_path / "fresh"
    assert run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", fresh, "--tolerance",
                    "1e-30").returncode == 1
    assert not fresh.exists()


def test_overwrite_replaces_an_export(tmp_path):
    src = make_model(tmp_path / "model", "distilbert", "seq")
    out = tmp_path / "onnx"
    run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", out, check=True)
    assert not (out / "model.int8.onnx").exists()
    run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", out, "--quantize", "int8",
             "--overwrite_output_dir", check=True)
    assert (out / "model.int8.onnx").is_file() and json.loads((out / "export.json").read_text())["int8"]


@pytest.mark.skipif(not (GLUE_DATA / "SST-2" / "dev.tsv").is_file(), reason="needs the real SST-2 (../shared)")
def test_the_dev_score_is_run_glues_metric_on_onnx_runtimes_outputs(tmp_path):
    src = make_model(tmp_path / "model", "bert", "seq")
    out = tmp_path / "onnx"
    run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", out, "--quantize", "int8",
             "--task_name", "sst2", "--data_dir", GLUE_DATA / "SST-2", "--max_eval_samples", 100, check=True)
    record = json.loads((out / "export.json").read_text())
    data = glue.load_task("sst2", GLUE_DATA / "SST-2")
    split = data.dev["sst2"].head(100)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    ref = deploy.run_torch(model, tok, split.texts, record["inputs"], ["logits"], 128)
    expected = glue.compute_metrics(data.task, np.stack(ref["logits"]).argmax(-1), split.labels)
    assert record["dev"]["fp32"]["metrics"] == pytest.approx(expected) and record["dev"]["fp32"]["rows"] == 100
    assert record["int8"]["dev_points_lost"] == pytest.approx(record["dev"]["fp32"]["score"] -
                                                              record["dev"]["int8"]["score"])
    assert record["parity"]["rows"] == 100  # the dev set's sentences, not the built-in ones


def test_per_channel_int8_has_a_scale_per_weight_column(tmp_path):
    src = make_model(tmp_path / "model", "bert", "seq")
    scales = {}
    for per_channel in (False, True):
        out = tmp_path / f"onnx_{per_channel}"
        run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", out, "--quantize", "int8",
                 *(["--per_channel"] if per_channel else []), check=True)
        assert json.loads((out / "export.json").read_text())["int8"]["per_channel"] is per_channel
        weights = onnx.load(str(out / "model.int8.onnx")).graph.initializer
        scales[per_channel] = [w.dims for w in weights if w.name.endswith("_scale") and w.data_type == 1]
    assert scales[False] and all(list(d) in ([], [1]) for d in scales[False])  # one scale per matrix
    assert any(list(d) == [64] for d in scales[True])  # the FFN's first matrix: one per its 64 columns


def squad_file(path):
    paragraphs = [{"context": c, "qas": [{"id": f"q{i}", "question": q, "answers": [
        {"text": c.split()[0], "answer_start": 0}]}]} for i, (q, c) in enumerate(export_onnx.QUESTIONS)]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def test_a_qa_export_is_scored_with_run_qas_metric(tmp_path):
    src = make_model(tmp_path / "model", "bert", "qa")
    dev = squad_file(tmp_path / "dev.json")
    out = tmp_path / "onnx"
    run_main(export_onnx.main, "--model_name_or_path", src, "--output_dir", out, "--validation_file", dev,
             check=True)
    record = json.loads((out / "export.json").read_text())
    data = qa.load_split(str(dev), "validation", False, training=False)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    cols = qa.features(tok, data.examples, 384, 128, 64, training=False)  # run_qa.py's defaults, the export's too
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask]),
                        token_type_ids=torch.tensor([types])) for ids, mask, types in
                  zip(cols["input_ids"], cols["attention_mask"], cols["token_type_ids"])]
    predictions, _, _ = qa.postprocess(data.examples, cols, [o.start_logits[0].numpy() for o in logits],
                                       [o.end_logits[0].numpy() for o in logits])
    assert record["dev"]["fp32"]["metrics"] == pytest.approx(qa.squad_metrics(data.examples, predictions))
    # the QA model's own bad input
    line = input_error(export_onnx.main, ["--model_name_or_path", src, "--output_dir", tmp_path / "short",
                                          "--validation_file", dev, "--max_seq_length", 12])
    assert "--max_seq_length 12 leaves no room for a question of up to --max_query_length 64 tokens" in line
    line = input_error(export_onnx.main, ["--model_name_or_path", src, "--output_dir", tmp_path / "glue",
                                          "--task_name", "sst2"])
    assert line.endswith("a QA model is scored on --validation_file (SQuAD JSON), not on a GLUE --task_name")
    (tmp_path / "empty.txt").write_text("\n \n")
    line = input_error(export_onnx.main, ["--model_name_or_path", src, "--output_dir", tmp_path / "empty",
                                          "--sample_file", tmp_path / "empty.txt"])
    assert line.endswith("empty.txt: no text in it")
    assert not [p for p in tmp_path.iterdir() if p.name in ("short", "glue", "empty", ".short.partial")]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("bert") / "model", "bert", "seq")


@pytest.mark.parametrize("extra, expected", [
    (["--tolerance", "0"], "argument --tolerance: must be a positive number, got 0"),
    (["--tolerance=-1e-4"], "argument --tolerance: must be a positive number, got -1e-4"),
    (["--tolerance", "nan"], "argument --tolerance: must be a finite number, got nan"),
    (["--tolerance", "x"], "argument --tolerance: invalid float value: 'x'"),
    (["--quantize", "int4"], "argument --quantize: invalid choice: 'int4' (choose from 'int8')"),
    (["--max_samples", "0"], "--max_samples 0: give at least 1"),
    (["--max_seq_length", "0"], "--max_seq_length 0: give at least 1"),
    (["--max_eval_samples", "0"], "--max_eval_samples 0: give at least 1"),
    (["--doc_stride=-1"], "--doc_stride -1: give at least 0"),
    (["--per_channel"], "--per_channel is a way to --quantize int8: give both"),
    (["--data_dir", "x"], "--data_dir needs --task_name (the GLUE task whose files are there)"),
    (["--task_name", "sst2", "--validation_file", "x"], "give --task_name with --data_dir, or --validation_file, "
     "not both"),
])
def test_bad_flags_fail_in_one_line(tmp_path, bert, extra, expected):
    out = tmp_path / "onnx"
    line = input_error(export_onnx.main, ["--model_name_or_path", bert, "--output_dir", out, *extra])
    assert line == f"export_onnx.py: error: {expected}"
    assert not out.exists()


def test_bad_models_and_folders_fail_in_one_line(tmp_path, bert):
    out = tmp_path / "onnx"
    headless = tmp_path / "headless"
    tok = tokenizer_for("bert", headless)
    transformers.BertModel(transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64)).save_pretrained(
        headless)
    cases = [
        ([tmp_path / "nowhere"], f"the model {tmp_path / 'nowhere'} does not exist: check the path"),
        ([tmp_path], "no config.json there"),
        ([headless], "unsupported head (BertModel): the export takes a sequence classifier (run_glue.py)"),
    ]
    for src, expected in cases:
        line = input_error(export_onnx.main, ["--model_name_or_path", *src, "--output_dir", out])
        assert expected in line, line
    mlm = make_model(tmp_path / "mlm", "distilbert", "mlm")
    line = input_error(export_onnx.main, ["--model_name_or_path", mlm, "--output_dir", out, "--task_name", "sst2"])
    assert line.endswith("a masked LM has no task to score: leave out --task_name and --validation_file")
    (tmp_path / "bad.txt").write_text("one\ttwo\nthree\n")
    line = input_error(export_onnx.main, ["--model_name_or_path", bert, "--output_dir", out, "--sample_file",
                                          tmp_path / "bad.txt"])
    assert line.endswith("give one text, or two separated by one tab, on every line")
    assert not out.exists()
    run_main(export_onnx.main, "--model_name_or_path", bert, "--output_dir", out, check=True)
    line = input_error(export_onnx.main, ["--model_name_or_path", bert, "--output_dir", out])
    assert line.endswith(f"--output_dir {out} holds another export: give --overwrite_output_dir to replace it, or "
                         "another folder")
