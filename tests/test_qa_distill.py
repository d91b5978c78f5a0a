"""QA distillation's pieces: the span losses against numpy window by window (padding left out), and the teacher's
cached start/end logits against the teacher run on each window alone."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertTokenizer,
)

from glue_helpers import overwrite_logits
from tasks import qa, qa_distill, teacher_pass
from tasks.teacher_pass import TEACHER_LOGITS

# ----------------------------------------------------------------------------------------------------------
# The distillation losses, against numpy window by window


def np_log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_span_losses_equal_a_per_window_computation_over_real_tokens_only():
    g = torch.Generator().manual_seed(0)
    lengths, width, T = [3, 5, 8], 8, 2.0
    mask = torch.tensor([[k < n for k in range(width)] for n in lengths])
    s_start, s_end, t_start, t_end = (torch.randn(3, width, generator=g) * 3 for _ in range(4))
    starts, ends = torch.tensor([1, 4, 0]), torch.tensor([2, 4, 7])
    ce, kd = [], []
    for i, n in enumerate(lengths):
        for s, t, gold in ((s_start, t_start, starts), (s_end, t_end, ends)):
            s_i, t_i = s[i, :n].numpy().astype(np.float64), t[i, :n].numpy().astype(np.float64)
            ce.append(-np_log_softmax(s_i)[gold[i]])
            p = np.exp(np_log_softmax(t_i / T))
            kd.append((p * (np.log(p) - np_log_softmax(s_i / T))).sum() * T**2)
    # each loss: the mean over windows of start and of end, the two averaged
    assert qa_distill.span_loss(s_start, s_end, starts, ends, mask).item() == pytest.approx(np.mean(ce), rel=1e-5)
    assert qa_distill.span_kd(s_start, s_end, t_start, t_end, mask, T).item() == pytest.approx(np.mean(kd), rel=1e-5)
    # padding does not count: other logits there change nothing
    noise = torch.where(mask, 0.0, torch.randn(3, width, generator=g) * 50)
    assert qa_distill.span_kd(s_start + noise, s_end - noise, t_start - noise, t_end + noise, mask, T).item() == \
        pytest.approx(np.mean(kd), rel=1e-5)
    noisy_ce = qa_distill.span_loss(s_start + noise, s_end, starts, ends, mask).item()
    assert noisy_ce == pytest.approx(np.mean(ce), rel=1e-5)


def test_span_kd_is_zero_for_a_student_equal_to_its_teacher_and_grows_with_the_gap():
    g = torch.Generator().manual_seed(1)
    t, mask = torch.randn(2, 6, generator=g), torch.ones(2, 6, dtype=torch.bool)
    assert qa_distill.span_kd(t, t, t, t, mask, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    near = qa_distill.span_kd(t + 0.1 * torch.randn(2, 6, generator=g), t, t, t, mask, 2.0).item()
    far = qa_distill.span_kd(t + 2.0 * torch.randn(2, 6, generator=g), t, t, t, mask, 2.0).item()
    assert 0 < near < far


def test_the_teachers_cached_logits_equal_the_teacher_run_window_by_window(tmp_path, syn_qa, tokenizer_dir,
                                                                              capsys):
    import datasets

    tok = BertTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    teacher = BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=2, intermediate_size=64,
                                                  max_position_embeddings=64)).eval()
    exs = qa.load_split(str(syn_qa / "v1" / "dev-v1.1.json"), "dev", False, False).examples[:20]
    cols = qa.features(tok, exs, 48, 8, 16, training=True)
    ds = datasets.Dataset.from_dict({k: cols[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
    assert len({len(ids) for ids in cols["input_ids"]}) > 1  # windows of several lengths: batches are padded
    training_args = SimpleNamespace(fp16=False, bf16=False, per_device_eval_batch_size=4, device=torch.device("cpu"),
                            process_index=0, disable_tqdm=True)
    identity = {"model": "a tiny QA teacher", "weights": "seed 0"}
    flags = qa_distill.QADistillArguments(teacher_name_or_path="t", teacher_logits_cache=str(tmp_path / "cache"))

    def with_logits(model, identity):  # the training windows with the teacher's logits, as run_qa.py adds them
        return teacher_pass.Teacher(flags, model, tok, identity).with_logits(ds, tok, training_args, per_token=True)

    def start_end(row):
        pairs = np.array(row[TEACHER_LOGITS])
        return pairs[:, 0], pairs[:, 1]

    got = with_logits(teacher, identity)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = with_logits(None, identity)  # a hit: no model
    with torch.no_grad():
        for i, ids in enumerate(cols["input_ids"]):
            out = teacher(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([cols["token_type_ids"][i]]))
            for mine, theirs, cached in zip(start_end(got[i]), (out.start_logits[0], out.end_logits[0]),
                                            start_end(again[i])):
                assert len(mine) == len(ids)
                np.testing.assert_allclose(mine, theirs.numpy(), atol=1e-5)
                assert (cached == mine).all()
    torch.manual_seed(1)  # another teacher (another identity): a miss, computed anew and kept beside the first
    other = BertForQuestionAnswering(teacher.config).eval()
    new = with_logits(other, {**identity, "weights": "seed 1"})
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert not np.allclose(start_end(new[0])[0], start_end(got[0])[0])
    # Damage of other kinds: another teacher's file under this one's name, then this file's
    # logits changed in place to other finite numbers. Each is said, recomputed, and never used.
    first, second = sorted((tmp_path / "cache").glob("*.npz"), key=lambda p: p.stat().st_mtime)
    first.write_bytes(second.read_bytes())
    capsys.readouterr()
    fixed = with_logits(teacher, identity)
    assert f"the cached teacher logits at {first} were not used (it holds the logits of another key" in (
        capsys.readouterr().out)
    assert fixed[0][TEACHER_LOGITS] == got[0][TEACHER_LOGITS]
    overwrite_logits(first, lambda a: a.__setitem__(slice(0, 5), 1.5))
    fixed = with_logits(teacher, identity)
    assert "(its contents do not match their digest): computing them again" in capsys.readouterr().out
    assert fixed[0][TEACHER_LOGITS] == got[0][TEACHER_LOGITS]
