"""DistilRoBERTa and DistilGPT2 end to end on tiny generated models: a byte-level BPE tokenizer
trained on the corpus, binarization, token counts, the student extracted from the teacher's layers, train.sh
with STUDENT=roberta (MLM) and STUDENT=gpt2 (CLM), and the result loaded with AutoModelFor* and a pipeline.
The extraction is also pinned to the teacher: a student given all of its layers computes its logits."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizerFast,
    pipeline,
)

from conftest import ROOT, run_main
from core import loading
from scripts import binarized_data, token_counts
from scripts.extract import student as extract
from train_helpers import make_bpe_teacher


def student_config(path, teacher, layers):
    config = type(teacher.config).from_dict({**teacher.config.to_dict(), "num_hidden_layers": layers})
    path.write_text(config.to_json_string())
    return path


@pytest.mark.parametrize("kind", ["roberta", "gpt2"])
def test_a_student_given_every_layer_reproduces_its_teacher(tmp_path, articles, kind):
    """Tied heads and RoBERTa's position offset (padding_idx + 1) come out right, or the logits would differ."""
    teacher, tok = make_bpe_teacher(tmp_path / "teacher", kind, [a["text"] for a in articles[:40]])
    config = student_config(tmp_path / "all.json", teacher, 4)
    out = tmp_path / "all.safetensors"
    run_main(extract.main, "--model_type", kind, "--model_name", tmp_path / "teacher", "--student_config", config,
             "--dump_checkpoint", out, check=True)
    student = type(teacher)(type(teacher.config).from_json_file(str(config)))
    loading.load_student_weights(student, out)
    tok.pad_token = tok.pad_token or tok.eos_token  # GPT-2 has no pad token; right padding, masked out
    ids = tok(["the city of the river", "a man"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(**ids).logits, teacher(**ids).logits, rtol=0, atol=1e-6)
    head = student.lm_head.decoder.weight if kind == "roberta" else student.lm_head.weight
    assert head.data_ptr() == student.get_input_embeddings().weight.data_ptr()  # still tied after loading


def test_bad_extractions_fail_with_one_line_before_writing(tmp_path, articles):
    teacher, _ = make_bpe_teacher(tmp_path / "teacher", "roberta", [a["text"] for a in articles[:40]])
    out = tmp_path / "init.safetensors"
    base = ["--model_type", "roberta", "--model_name", tmp_path / "teacher", "--dump_checkpoint", out]
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({**teacher.config.to_dict(), "num_hidden_layers": 2, "hidden_size": 64}))
    gpt = tmp_path / "gpt.json"
    gpt.write_text(GPT2Config(n_layer=2).to_json_string())
    for extra, message in (
        (["--student_config", student_config(tmp_path / "two.json", teacher, 2), "--layers", "0,9"], "out of range"),
        (["--student_config", tmp_path / "two.json", "--layers", "0"], "lists 1 layers"),
        (["--student_config", wide], "student hidden_size 64 differs from the teacher's 32"),
        (["--student_config", student_config(tmp_path / "five.json", teacher, 5)], "cannot pick 5 layers"),
    ):
        proc = run_main(extract.main, *base, *extra)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], (extra, proc.stderr)
        assert not out.exists()
    for args, message in (  # a missing config or teacher, an unknown type: one line, nothing written
        ([*base, "--student_config", tmp_path / "none.json"], "none.json"),
        (["--model_type", "roberta", "--model_name", tmp_path / "no-teacher", "--student_config",
          tmp_path / "two.json", "--dump_checkpoint", out], "does not exist"),
        (["--model_type", "xlnet", "--student_config", tmp_path / "two.json"], "invalid choice: 'xlnet'"),
    ):
        proc = run_main(extract.main, *args)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], (args, proc.stderr)
        assert not out.exists()
    proc = run_main(extract.main, *base, "--student_config", gpt)  # a GPT-2 config is not a RoBERTa student
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines()[-1] == (f"student.py: error: {gpt} is a gpt2 config: --model_type roberta "
                                                    "copies layers between roberta models")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["roberta", "gpt2"])
def test_the_whole_path_for_the_other_students(tmp_path, articles, kind):
    texts = [a["text"] for a in articles]
    teacher_dir = tmp_path / f"tiny-{kind}"  # train.sh finds the data by the teacher's folder name
    make_bpe_teacher(teacher_dir, kind, texts)
    dump = tmp_path / "dump.txt"
    dump.write_text("\n".join(line for t in texts for line in t.split("\n") if line.strip()) + "\n")
    data = tmp_path / "data"
    run_main(binarized_data.main, "--file_path", dump, "--tokenizer_type", kind, "--tokenizer_name", teacher_dir,
             "--dump_file", data / "binarized_text", check=True)
    binarized = data / f"binarized_text.{teacher_dir.name}.pickle"
    if kind == "roberta":  # the MLM's masking weights; a causal LM needs none
        vocab = len(RobertaTokenizerFast.from_pretrained(str(teacher_dir)))
        run_main(token_counts.main, "--data_file", binarized, "--token_counts_dump",
                 data / f"token_counts.{teacher_dir.name}.pickle", "--vocab_size", vocab, check=True)
    teacher = (RobertaForMaskedLM if kind == "roberta" else GPT2LMHeadModel).from_pretrained(teacher_dir)
    config = student_config(tmp_path / "student.json", teacher, 2)
    run = tmp_path / "run"
    env = dict(os.environ, PYTHON=sys.executable, STUDENT=kind, TEACHER=str(teacher_dir), DATA_DIR=str(data),
               STUDENT_CONFIG=str(config), INIT=str(tmp_path / "init.safetensors"), DUMP_PATH=str(run))
    proc = subprocess.run(["bash", str(ROOT / "train.sh"), "--n_epoch", "1", "--batch_size", "8",
                           "--gradient_accumulation_steps", "1", "--log_interval", "5"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"copied teacher layers [0, 3] into a 2-layer {kind} student" in proc.stdout  # extraction ran first
    params = json.loads((run / "parameters.json").read_text())
    assert params["student_type"] == params["teacher_type"] == kind and params["mlm"] is (kind == "roberta")
    lm = "mlm" if kind == "roberta" else "clm"
    assert (params["alpha_ce"], params["alpha_cos"], params[f"alpha_{lm}"]) == (5.0, 1.0, 2.0 if lm == "mlm" else 0.5)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r[lm] > 0 and r["ce"] >= 0 for r in records if "loss" in r)

    if kind == "roberta":  # the HF folder loads and answers as its task's pipeline
        model = AutoModelForMaskedLM.from_pretrained(run)
        guesses = pipeline("fill-mask", model=str(run))("the city lies on the <mask>.")
        assert len(guesses) == 5 and all("<mask>" in g["sequence"] or g["token_str"] for g in guesses)
    else:
        model = AutoModelForCausalLM.from_pretrained(run)
        text = pipeline("text-generation", model=str(run))("the city", max_new_tokens=5, do_sample=False)
        assert text[0]["generated_text"].startswith("the city")
    assert model.config.num_hidden_layers == 2


def test_shipped_configs_are_the_published_students():
    from transformers import DistilBertConfig

    configs = ROOT / "training_configs"
    for name, vocab in (("distilbert-base-cased", 28996), ("distilbert-base-multilingual-cased", 119547)):
        c = DistilBertConfig.from_json_file(str(configs / f"{name}.json"))  # bert-base-cased's / mBERT's vocabulary
        got = (c.n_layers, c.dim, c.n_heads, c.hidden_dim, c.vocab_size, c.sinusoidal_pos_embds)
        assert got == (6, 768, 12, 3072, vocab, False), name
    r = RobertaConfig.from_json_file(str(configs / "distilroberta-base.json"))  # roberta-base's shapes, 6 layers
    got = (r.num_hidden_layers, r.hidden_size, r.num_attention_heads, r.intermediate_size, r.vocab_size,
           r.max_position_embeddings, r.pad_token_id, r.type_vocab_size)
    assert got == (6, 768, 12, 3072, 50265, 514, 1, 1)
    g = GPT2Config.from_json_file(str(configs / "distilgpt2.json"))  # gpt2's shapes, 6 blocks
    got = (g.n_layer, g.n_embd, g.n_head, g.vocab_size, g.n_positions, g.activation_function)
    assert got == (6, 768, 12, 50257, 1024, "gelu_new")
    for kind, name in (("roberta", "distilroberta-base"), ("gpt2", "distilgpt2")):  # the script's defaults
        assert extract.TYPES[kind][4] == name and (configs / f"{name}.json").is_file()
