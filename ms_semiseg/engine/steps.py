"""Compiled training steps (spec B.6 + C): each is one graph with fixed shapes, called once per iteration.

The building blocks every method shares, and the BatchNorm/dropout mode they are compiled in (a Cell's train flag
is read when a graph compiles, so each mode gets its own graph and `run` sets the flags before every call):
- `TrainStep`: the supervised loss and the SGD update (or, with gradient accumulation, its first part); the
  methods' semi steps derive from it (`methods/mean_teacher.py` `MeanTeacherStep`, PCR's and BRPG's `step.py`);
- `SupervisedStep` (student train; teacher train for its BN statistics): warm-up and supervised-only training;
- `Predictor` (eval): logits for validation.
With `trainer.grad_accumulation: N`, the supervised and semi steps come twice: an accumulate graph
(`apply_update=False`: gradients, and PCR's prototype statistics, are added to `SumBuffers`) for the first N-1
micro-batches, and the update graph for the N-th (buffers + its own, then SGD, prototypes, EMA; buffers emptied).
Every wrapper is built with auto_prefix=False so that it does not rename the parameters of the models it holds
(the student's are `student.*`, the teacher's `teacher.*`, see `MeanTeacherPair`).
"""
from dataclasses import dataclass

import numpy as np

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from ..losses import supervised_loss
from ..models.builder import inference_heads
from .distributed import gradient_reducer, rank_mean

ENTROPY_DROP, CONFIDENCE = "entropy_drop", "confidence"


@dataclass(frozen=True)
class LossSettings:
    """Loss weights and switches, read from the config by the trainer."""
    aux_weight: float = 0.4
    unsup_type: str = ENTROPY_DROP
    unsup_weight: float = 1.0
    confid_thresh: float = 0.8
    proto_weight: float = 1.0
    proto_update: bool = True


class MeanTeacherPair(nn.Cell):
    """Owns the student and (for semi-supervised runs) the teacher, so their parameters are named `student.*` and
    `teacher.*`: two instances of one model class would otherwise share names, which a graph refuses."""

    def __init__(self, student, teacher=None):
        super().__init__()
        self.student = student
        self.has_teacher = teacher is not None
        if teacher is not None:
            self.teacher = teacher

    def restore_names(self):
        """Re-derives every parameter name from this tree (wrappers with auto_prefix rename the models they hold)."""
        self.update_parameters_name("")


def set_modes(train_cells=(), eval_cells=()):
    for cell in train_cells:
        cell.set_train(True)
    for cell in eval_cells:
        cell.set_train(False)


class Wrapper(nn.Cell):
    def __init__(self):
        super().__init__(auto_prefix=False)


class SumBuffers(nn.Cell):
    """Running sums over the micro-batches of one update (`trainer.grad_accumulation`), shared by a step's
    accumulate and update graphs: `add` stores scale * values, `take` returns stored + scale * values and
    empties the buffers. Gradients use scale 1/N (the update sees the mean gradient), statistics scale 1."""

    def __init__(self, shapes, prefix, scale=1.0):
        super().__init__()
        self.buffers = ParameterTuple([Parameter(Tensor(np.zeros(shape, np.float32)), name=f"{prefix}.{i}",
                                                 requires_grad=False) for i, shape in enumerate(shapes)])
        self.scale = scale

    def add(self, values):
        added = ()
        for buffer, value in zip(self.buffers, values):
            added += (ops.assign_add(buffer, value * self.scale),)
        return added

    def take(self, values):
        totals = ()
        for buffer, value in zip(self.buffers, values):
            total = buffer + value * self.scale
            cleared = ops.assign(buffer, ops.depend(ops.zeros_like(buffer), total))  # after the read
            totals += (ops.depend(total, cleared),)
        return totals


class TrainStep(Wrapper):
    """Shared parts: the student's supervised loss and SGD (or, with gradient accumulation, its first part).

    Dropout keep masks are loaded into the models' HostMaskDropout2d cells from the host before each call
    (`masks.load_dropout_masks`): an `ops.assign` inside this graph is not ordered before the reads in the
    differentiated forward (measured: the first step sometimes read the previous mask)."""

    def __init__(self, pair, optimizer, criterion, settings, grad_sums=None, apply_update=True):
        super().__init__()
        self.pair = pair
        self.student = pair.student
        self.teacher = pair.teacher if pair.has_teacher else None
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        # data parallel (identities on one device): gradients and logged losses averaged over ranks
        self.grad_reducer = gradient_reducer(self.weights)
        self.rank_mean = rank_mean()
        self.criterion = criterion
        self.aux_weight = settings.aux_weight
        self.grad_sums = grad_sums  # SumBuffers of the gradients with gradient accumulation, else None
        self.apply_update = apply_update or grad_sums is None

    def run(self, *args):
        set_modes(train_cells=[self] + [m for m in (self.student, self.teacher) if m is not None])
        return self(*args)

    def supervised(self, pred, aux, label):
        return supervised_loss(self.criterion, pred, label, aux, self.aux_weight)

    def apply_gradients(self, grads):
        """SGD on the rank-averaged gradients. Accumulating: the accumulate graph only adds them to the buffers;
        the update graph averages buffers + its own (one all-reduce per update) and steps."""
        if self.grad_sums is None:
            return self.optimizer(self.grad_reducer(grads))
        if not self.apply_update:
            return self.grad_sums.add(grads)
        return self.optimizer(self.grad_reducer(self.grad_sums.take(grads)))


class SupervisedStep(TrainStep):
    """construct(image_l, label_l) -> float32 [total, sup, 0, 0].

    With a teacher (warm-up of a semi-supervised run), the teacher also runs in train mode on the labeled batch,
    output discarded, refreshing its BatchNorm statistics as U2PL does."""

    def student_loss(self, image, label):
        pred, aux, _, _ = self.student(image)
        return self.supervised(pred, aux, label)

    def construct(self, image_l, label_l):
        loss, grads = ms.value_and_grad(self.student_loss, None, self.weights)(image_l, label_l)
        loss = ops.depend(loss, self.apply_gradients(grads))
        if self.teacher is not None:
            teacher_pred = ops.stop_gradient(self.teacher(image_l)[0])
            loss = ops.depend(loss, teacher_pred)
        zero = ops.zeros_like(loss)
        return self.rank_mean(ops.stack((loss, loss, zero, zero)))


class Predictor(Wrapper):
    """construct(x) -> (pred, proto or None) logits at the input size, the model in eval mode (validation)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def run(self, x):
        set_modes(eval_cells=[self, self.model])
        return self(x)

    def construct(self, x):
        return inference_heads(self.model, x.shape[2:], self.model(x))


def scalar(value):
    """A float32 scalar tensor: per-iteration values enter the graph as tensors, never as Python constants
    (a constant would be baked into the graph and trigger a recompilation when it changes)."""
    return Tensor(value, ms.float32)
