"""--objective: the published recipes' loss weights live in one table (train_args.OBJECTIVES), which train.py,
train.sh's OBJECTIVE=, the demo and its time estimate all read; an explicit --alpha_* flag wins over it."""

import pytest

from training import train_args
from training.losses import LOSS_NAMES

REQUIRED = ["--dump_path", "d", "--data_file", "f", "--student_config", "c", "--teacher_type", "bert",
            "--teacher_name", "t"]


def weights(*flags, student_type="distilbert"):
    args = train_args.parse_args([*REQUIRED, "--student_type", student_type, *flags])
    return {k: getattr(args, f"alpha_{k}") for k in LOSS_NAMES}, args


def test_each_objective_sets_its_weights_and_zero_elsewhere():
    expected = {  # the papers' recipes, written out by hand
        "distilbert": {"ce": 5.0, "mlm": 2.0, "cos": 1.0},  # Sanh et al. 2019; upstream's README command
        "minilm": {"att": 1.0, "vv": 1.0},  # Wang et al. 2020: last-layer attention + value relation
        "minilmv2": {"qq": 1.0, "kk": 1.0, "vv": 1.0},  # Wang et al. 2021
        "mlm": {"mlm": 1.0},  # no teacher
    }
    assert set(expected) == set(train_args.OBJECTIVES)
    for objective, nonzero in expected.items():
        got, args = weights("--objective", objective)
        assert got == {k: nonzero.get(k, 0.0) for k in LOSS_NAMES}, objective
        assert args.relation_heads == (48 if objective == "minilmv2" else None), objective
    assert weights()[0] == weights("--objective", "distilbert")[0]  # the reference run is the default


def test_a_causal_student_gets_the_clm_weight_instead_of_mlm():
    got, args = weights(student_type="gpt2")
    assert not args.mlm and (got["ce"], got["clm"], got["mlm"], got["cos"]) == (5.0, 0.5, 0.0, 1.0)
    got, _ = weights("--objective", "mlm", student_type="gpt2")
    assert (got["clm"], got["mlm"], got["ce"]) == (1.0, 0.0, 0.0)


def test_explicit_flags_win_over_the_objective():
    got, args = weights("--objective", "minilm", "--alpha_ce", "2", "--alpha_vv", "0")
    assert (got["ce"], got["att"], got["vv"], got["mlm"]) == (2.0, 1.0, 0.0, 0.0)
    got, args = weights("--objective", "minilmv2", "--relation_heads", "12")
    assert args.relation_heads == 12


def test_an_unknown_objective_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        weights("--objective", "tinybert")
    assert e.value.code == 2
    assert "--objective: invalid choice: 'tinybert'" in capsys.readouterr().err
