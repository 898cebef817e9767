"""Compiled training steps (spec B.6 + C): each is one graph with fixed shapes, called once per iteration.

Graphs and the BatchNorm/dropout mode they are compiled in (a Cell's train flag is read when a graph compiles,
so each mode gets its own graph and `run` sets the flags before every call):
- `SupervisedStep` (student train; teacher train for its BN statistics): warm-up and supervised-only training.
- `TeacherPseudoLabels` (teacher eval): pseudo-labels and confidences on the weak unlabeled view.
- `SemiStep` (student train, teacher train without gradient): CutMix, L_sup + L_u + L_proto, SGD, prototype
  update and EMA, all in one graph.
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

from ..losses import (confidence_unsup_loss, entropy_drop_unsup_loss, proto_cross_entropy,
                      supervised_loss)
from ..losses.ohem import IGNORE_INDEX, upsample_to
from ..models.builder import inference_heads
from .distributed import gradient_reducer, rank_mean, rank_sum
from .masks import box_keep_mask, gather_pixels, mix_with_next, sample_bilinear_align_corners

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


class _Wrapper(nn.Cell):
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


class _TrainStep(_Wrapper):
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


class SupervisedStep(_TrainStep):
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


class TeacherPseudoLabels(_Wrapper):
    """construct(image_u) -> (pseudo-label int32 (B,H,W), confidence float32 (B,H,W)) of the teacher in eval mode:
    argmax and max of softmax(pred upsampled to the image size)."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher
        self.argmax = ops.ArgMaxWithValue(axis=1)

    def run(self, image_u):
        set_modes(eval_cells=[self, self.teacher])
        return self(image_u)

    def construct(self, image_u):
        return self.pseudo_labels(self.teacher(image_u)[0], image_u.shape[2:])

    def pseudo_labels(self, pred, size):
        label, confidence = self.argmax(ops.softmax(upsample_to(pred, size), axis=1))
        return label.astype(ms.int32), confidence


def proto_targets(label_l, pseudo_u, conf_u, coords, thresh):
    """Targets of the selected pixels (spec C.3): GT on labeled images, the mixed pseudo-label where the mixed
    confidence reaches `thresh` on unlabeled ones, 255 elsewhere; flattened in (image, pixel) order."""
    labeled = gather_pixels(label_l, coords)
    pseudo = gather_pixels(pseudo_u, coords)
    confident = gather_pixels(conf_u, coords) >= thresh
    pseudo = ops.where(confident, pseudo, ops.full_like(pseudo, IGNORE_INDEX))
    return ops.concat((labeled, pseudo), axis=0).reshape(-1)


class SemiStep(_TrainStep):
    """One semi-supervised iteration (spec B.6 steps 2-10, C.3-C.4):

    construct(image_l, label_l, image_u, pseudo_u, conf_u, boxes, coords, drop_percent, ema_decay, extra=())
    -> float32 [total, sup, unsup, proto]. `extra` (an `ms.mutable` tuple) carries a subclass's own step inputs
    (BRPG: `brpg_step.BRPGSemiStep`, which also overrides `update_state` and `step_outputs`).

    `pseudo_u`/`conf_u` come from `TeacherPseudoLabels` on the weak view; `boxes` (B,4) are the CutMix boxes
    (empty = unmixed), `coords` (N,2) the patch-select pixels. The prototype bank is updated from the student's
    detached features after the SGD step, then the teacher follows the student (`ema`). Both writes are tied to
    the gradients and the SGD result with `ops.depend`, so they cannot run before the reads they must follow."""

    def __init__(self, pair, optimizer, criterion, settings, ema, use_proto, grad_sums=None, stat_sums=None,
                 apply_update=True):
        super().__init__(pair, optimizer, criterion, settings, grad_sums, apply_update)
        self.stat_sums = stat_sums  # SumBuffers of the prototype sums and counts with gradient accumulation
        self.ema = ema
        self.use_proto = use_proto
        self.proto_update = use_proto and settings.proto_update
        self.rank_sum = rank_sum()  # prototype sums/counts over ranks (identity on one device)
        self.entropy_drop = settings.unsup_type == ENTROPY_DROP
        self.unsup_weight = settings.unsup_weight
        self.proto_weight = settings.proto_weight
        self.confid_thresh = settings.confid_thresh

    def unsupervised(self, pred_u, teacher_logits_u, pseudo_u, conf_u, drop_percent):
        if self.entropy_drop:
            return entropy_drop_unsup_loss(pred_u, teacher_logits_u, pseudo_u, drop_percent)
        return confidence_unsup_loss(pred_u, pseudo_u, conf_u, self.confid_thresh)

    def base_losses(self, pred, aux, label_l, pseudo_u, conf_u, teacher_logits_u, drop_percent):
        """(L_sup + lambda_u * L_u, L_sup, L_u) of the student's outputs on cat(labeled, mixed unlabeled)."""
        num_labeled = label_l.shape[0]
        sup = self.supervised(pred[:num_labeled], None if aux is None else aux[:num_labeled], label_l)
        pred_u = upsample_to(pred[num_labeled:], label_l.shape[1:])
        unsup = self.unsupervised(pred_u, teacher_logits_u, pseudo_u, conf_u, drop_percent)
        return sup + self.unsup_weight * unsup, sup, unsup

    def student_loss(self, image_all, label_l, pseudo_u, conf_u, teacher_logits_u, coords, drop_percent, extra=()):
        """`extra`: more step inputs for subclasses (BRPG's), unused here."""
        pred, aux, _, rep_clf = self.student(image_all)
        total, sup, unsup = self.base_losses(pred, aux, label_l, pseudo_u, conf_u, teacher_logits_u, drop_percent)
        if not self.use_proto:
            return total, (sup, unsup, ops.zeros_like(sup))
        size = label_l.shape[1:]
        feats = sample_bilinear_align_corners(rep_clf, coords, size)
        feats = feats.reshape(-1, feats.shape[-1])
        logits, match_index = self.student.proto_net(feats)
        target = proto_targets(label_l, pseudo_u, conf_u, coords, self.confid_thresh)
        proto = proto_cross_entropy(logits, target)
        return total + self.proto_weight * proto, (sup, unsup, proto, feats, target, match_index)

    def update_prototypes(self, feats, target, match_index, after):
        proto_net = self.student.proto_net
        sums, counts = proto_net.update_statistics(feats, target, target != IGNORE_INDEX, match_index)
        if self.stat_sums is not None:  # the update's statistics: every micro-batch saw the same weights
            if not self.apply_update:
                return self.stat_sums.add((ops.depend(sums, after), counts))
            sums, counts = self.stat_sums.take((sums, counts))
        sums, counts = self.rank_sum(sums), self.rank_sum(counts)  # the global batch's statistics
        return proto_net.momentum_update(ops.depend(sums, after), counts)

    def update_state(self, parts, after):
        """Writes of step state other than the weights and the teacher (PCR: the prototype bank), ordered after
        `after` (the gradients); subclasses replace it."""
        if self.proto_update:
            return self.update_prototypes(parts[3], parts[4], parts[5], after)
        return after

    def step_outputs(self, losses, parts):
        """The step's result: the loss vector here; subclasses add outputs taken from `parts`."""
        return losses

    def construct(self, image_l, label_l, image_u, pseudo_u, conf_u, boxes, coords, drop_percent, ema_decay,
                  extra=()):
        keep = box_keep_mask(boxes, image_u.shape[2], image_u.shape[3])
        image_all = ops.concat((image_l, mix_with_next(image_u, keep)), axis=0)
        pseudo_u, conf_u = mix_with_next(pseudo_u, keep), mix_with_next(conf_u, keep)
        teacher_pred = ops.stop_gradient(self.teacher(image_all)[0])
        teacher_logits_u = upsample_to(teacher_pred[label_l.shape[0]:], label_l.shape[1:])
        grad_fn = ms.value_and_grad(self.student_loss, None, self.weights, has_aux=True)
        (total, parts), grads = grad_fn(image_all, label_l, pseudo_u, conf_u, teacher_logits_u, coords,
                                        drop_percent, extra)
        # the EMA writes teacher weights: after the teacher forward has read them (its logits may be unused)
        updated = ops.depend(self.apply_gradients(grads), teacher_pred)
        updated = ops.depend(updated, self.update_state(parts, grads))
        if self.apply_update:
            total = ops.depend(total, self.ema(ops.depend(ema_decay, updated)))
        else:  # the teacher follows once per update
            total = ops.depend(total, updated)
        return self.step_outputs(self.rank_mean(ops.stack((total, parts[0], parts[1], parts[2]))), parts)


class Predictor(_Wrapper):
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
