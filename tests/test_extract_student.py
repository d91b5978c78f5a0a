"""scripts/extract/distilbert.py: which layers are copied, that they are copied exactly, and strict loading."""


import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

from conftest import ROOT, run_main, run_script
from core import loading
from core.errors import InputError
from scripts.extract import distilbert as extract
from train_helpers import make_headless_teacher_dir, make_teacher_dir, write_student_config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer_dir):
    folder, model, tok = make_teacher_dir(tmp_path_factory.mktemp("teacher") / "tiny-bert", tokenizer_dir, layers=4)
    return folder, model, tok


def test_default_layers_are_spread_evenly():
    assert extract.spread_layers(6, 12) == [0, 2, 4, 7, 9, 11]  # upstream's DistilBERT choice
    assert extract.spread_layers(4, 12) == [0, 4, 7, 11]
    assert extract.spread_layers(12, 12) == list(range(12))
    assert extract.spread_layers(2, 4) == [0, 3]


def test_shipped_configs_match_bert_base():
    for name, layers in (("distilbert-base-uncased", 6), ("distilbert-small-uncased", 4)):
        c = DistilBertConfig.from_json_file(str(ROOT / "training_configs" / f"{name}.json"))
        assert (c.n_layers, c.dim, c.n_heads, c.hidden_dim, c.vocab_size) == (layers, 768, 12, 3072, 30522)
        assert (c.max_position_embeddings, c.sinusoidal_pos_embds, c.activation) == (512, False, "gelu")


@pytest.mark.slow
def test_script_copies_exactly_the_chosen_layers(tmp_path, teacher):
    folder, t_model, tok = teacher
    config = write_student_config(tmp_path / "student.json", len(tok), layers=2)
    out = tmp_path / "init.safetensors"
    run_script(
        "scripts/extract/distilbert.py",
        "--model_name",
        folder,
        "--student_config",
        config,
        "--layers",
        "1,3",
        "--dump_checkpoint",
        out,
        check=True,
    )
    student = DistilBertForMaskedLM(DistilBertConfig.from_json_file(str(config)))
    loading.load_student_weights(student, out)
    s, t = student.state_dict(), t_model.state_dict()
    pairs = {
        "q_lin": "attention.self.query",
        "out_lin": "attention.output.dense",
        "lin1": "intermediate.dense",
        "lin2": "output.dense",
        "output_layer_norm": "output.LayerNorm",
    }
    for s_idx, t_idx in ((0, 1), (1, 3)):
        for s_name, t_name in pairs.items():
            s_key = next(
                k for k in s if k.startswith(f"distilbert.transformer.layer.{s_idx}.") and f".{s_name}.weight" in k
            )
            assert torch.equal(s[s_key], t[f"bert.encoder.layer.{t_idx}.{t_name}.weight"]), s_key
        # and not the neighbouring layer
        assert not torch.equal(
            s[f"distilbert.transformer.layer.{s_idx}.ffn.lin1.weight"],
            t[f"bert.encoder.layer.{t_idx - 1}.intermediate.dense.weight"],
        )
    assert torch.equal(s["distilbert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(s["vocab_projector.weight"], t["bert.embeddings.word_embeddings.weight"])  # tied
    assert torch.equal(s["vocab_projector.bias"], t["cls.predictions.bias"])
    assert torch.equal(s["vocab_transform.weight"], t["cls.predictions.transform.dense.weight"])
    folded = t["bert.embeddings.position_embeddings.weight"] + t["bert.embeddings.token_type_embeddings.weight"][0]
    assert torch.equal(s["distilbert.embeddings.position_embeddings.weight"], folded)


def test_copying_every_layer_reproduces_the_teacher(teacher):
    """With all layers, the head transform and token type 0 folded in, the student *is* the teacher."""
    _, t_model, tok = teacher
    config = DistilBertConfig(
        vocab_size=len(tok), dim=32, n_layers=4, n_heads=2, hidden_dim=64, max_position_embeddings=64
    )
    student = DistilBertForMaskedLM(config).eval()
    student.load_state_dict(extract.extract(t_model, config, [0, 1, 2, 3]), strict=False)
    ids = torch.tensor([tok("the city is on the river and has a population")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, t_model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        unfolded = extract.extract(t_model, config, [0, 1, 2, 3], fold_token_type=False)
        student.load_state_dict(unfolded, strict=False)
        assert not torch.allclose(student(input_ids=ids).logits, t_model(input_ids=ids).logits, atol=1e-3)


def test_loading_rejects_checkpoints_that_do_not_fit(tmp_path, teacher):
    _, t_model, tok = teacher
    cfg2 = DistilBertConfig(
        vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
    )
    cfg3 = DistilBertConfig(
        vocab_size=len(tok), dim=32, n_layers=3, n_heads=2, hidden_dim=64, max_position_embeddings=64
    )
    three = tmp_path / "three.safetensors"
    save_file(extract.extract(t_model, cfg3, [0, 1, 3]), str(three))
    with pytest.raises(InputError, match="3 transformer layers but the student config has 2"):
        loading.load_student_weights(DistilBertForMaskedLM(cfg2), three)

    state = extract.extract(t_model, cfg2, [0, 3])
    extra = tmp_path / "extra.safetensors"
    save_file({**state, "distilbert.pooler.weight": torch.zeros(2)}, str(extra))
    with pytest.raises(InputError, match="key.*the student does not have.*pooler"):
        loading.load_student_weights(DistilBertForMaskedLM(cfg2), extra)

    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if "layer.1.ffn.lin2.bias" not in k}, missing)
    with pytest.raises(InputError, match="lacks 1 key.*layer.1.ffn.lin2.bias"):
        loading.load_student_weights(DistilBertForMaskedLM(cfg2), missing)

    # upstream's default extraction (no head transform, tied decoder stored twice) still loads
    upstream = tmp_path / "upstream.pth"
    up = {k: v for k, v in state.items() if not k.startswith(("vocab_transform", "vocab_layer_norm"))}
    up["vocab_projector.weight"] = state["distilbert.embeddings.word_embeddings.weight"]
    torch.save(up, upstream)
    absent = loading.load_student_weights(DistilBertForMaskedLM(cfg2), upstream)
    assert set(absent) == set(loading.OPTIONAL_KEYS)


def test_script_writes_metadata_and_rejects_bad_layers(tmp_path, teacher):
    folder, _, tok = teacher
    config = write_student_config(tmp_path / "student.json", len(tok), layers=2)
    out = tmp_path / "init.safetensors"
    bad = run_main(
        extract.main,
        "--model_name",
        folder,
        "--student_config",
        config,
        "--layers",
        "0,9",
        "--dump_checkpoint",
        out,
    )
    assert bad.returncode == 2 and "out of range" in bad.stderr and not out.exists()
    extract.main(["--model_name", str(folder), "--student_config", str(config), "--dump_checkpoint", str(out)])
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["teacher_layers"] == "0,3" and meta["teacher"] == str(folder)
    assert len(load_file(str(out))) == 4 + 2 * 16 + 1 + 4


def test_a_teacher_without_mlm_head_gives_the_student_its_own_head(tmp_path, tokenizer_dir, capsys):
    """A BertModel checkpoint has no head to copy: what from_pretrained filled it with (random, different under
    every seed) must not reach the student, whose head is a fresh student's; the rest is copied exactly."""
    folder, t_model, tok = make_headless_teacher_dir(tmp_path / "headless", tokenizer_dir, layers=4)
    config = write_student_config(tmp_path / "student.json", len(tok), layers=2)
    argv = ["--model_name", str(folder), "--student_config", str(config), "--layers", "1,3"]
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outs.append(load_file(str(extract.main([*argv, "--dump_checkpoint", str(tmp_path / f"{seed}.safetensors")]))))
        assert "the teacher has no masked-LM head: the student's head is left at random initialisation" in (
            capsys.readouterr().out
        )
    assert outs[0].keys() == outs[1].keys() and all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])

    torch.manual_seed(1)  # the head the first extraction's teacher was given
    random_head = BertForMaskedLM.from_pretrained(str(folder)).state_dict()
    torch.manual_seed(extract.FRESH_HEAD_SEED)
    fresh = DistilBertForMaskedLM(DistilBertConfig.from_json_file(str(config))).state_dict()
    s, t = outs[0], t_model.state_dict()
    for key in ("vocab_transform.weight", "vocab_transform.bias", "vocab_layer_norm.weight", "vocab_projector.bias"):
        assert torch.equal(s[key], fresh[key]), key
    assert not torch.equal(s["vocab_transform.weight"], random_head["cls.predictions.transform.dense.weight"])
    assert torch.equal(s["distilbert.embeddings.word_embeddings.weight"], t["embeddings.word_embeddings.weight"])
    assert torch.equal(s["distilbert.embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.weight"])
    for s_idx, t_idx in ((0, 1), (1, 3)):
        assert torch.equal(
            s[f"distilbert.transformer.layer.{s_idx}.attention.q_lin.weight"],
            t[f"encoder.layer.{t_idx}.attention.self.query.weight"],
        )
        assert torch.equal(
            s[f"distilbert.transformer.layer.{s_idx}.ffn.lin2.bias"], t[f"encoder.layer.{t_idx}.output.dense.bias"]
        )
    # train.py's strict loading takes it whole: no key missing, none optional left out
    student = DistilBertForMaskedLM(DistilBertConfig.from_json_file(str(config)))
    assert loading.load_student_weights(student, tmp_path / "1.safetensors") == []
