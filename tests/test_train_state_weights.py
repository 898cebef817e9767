"""Choosing the teacher or the student out of a training state (`last.ckpt`) for evaluation
(`checkpoint.select_model`, `eval --weights`); any other checkpoint is one model and passes through unchanged."""
import numpy as np
import pytest

from ms_semiseg.errors import UserError
from ms_semiseg.utils.checkpoint import select_model


def weights(value):
    return {"encoder.conv1.weight": np.full((2, 2), value, np.float32), "decoder.head.bias": np.full(2, value)}


def train_state(teacher=True):
    """The layout of a semi-supervised last.ckpt: both models, optimizer slots and a counter."""
    state = {f"student.{name}": value for name, value in weights(1.0).items()}
    if teacher:
        state.update({f"teacher.{name}": value for name, value in weights(2.0).items()})
    state.update({"optimizer.moments.student.encoder.conv1.weight": np.zeros((2, 2)), "train_state": np.zeros(1)})
    return state


@pytest.mark.parametrize("which, value", [(None, 2.0), ("teacher", 2.0), ("student", 1.0)])
def test_a_training_state_gives_the_chosen_model_without_its_prefix(which, value):
    chosen = select_model(train_state(), which, "last.ckpt")
    assert set(chosen) == set(weights(0.0))  # no optimizer slot, no counter, no prefix
    assert all(np.all(v == value) for v in chosen.values())


def test_a_supervised_training_state_defaults_to_its_student():
    chosen = select_model(train_state(teacher=False), None, "last.ckpt")
    assert all(np.all(v == 1.0) for v in chosen.values())
    with pytest.raises(UserError, match=r"last.ckpt: a training state without teacher\.\* weights \(it has student\)"):
        select_model(train_state(teacher=False), "teacher", "last.ckpt")


def test_a_single_model_checkpoint_passes_through_and_refuses_a_choice():
    plain = weights(3.0)
    assert select_model(plain, None, "best.ckpt") is plain
    with pytest.raises(UserError, match=r"best.ckpt: holds one model's weights.*expected a last.ckpt for --weights "
                                        r"student"):
        select_model(plain, "student", "best.ckpt")
