"""The mean teacher of U2PL without prototypes (no `net.proto_head`): after the supervised warm-up, the teacher's
pseudo-labels on the weak view supervise the student on CutMix-ed unlabeled images (entropy dropping or a
confidence threshold), and the teacher follows the student by EMA.

`MeanTeacherStep` is the semi-supervised step of every semi-supervised method; PCR (`pcr/step.py`) and BRPG
(`brpg/step.py`) derive from it and fill its three hooks: `method_loss` (their loss on the student's outputs, inside
the differentiated function), `update_state` (their state writes after the gradients) and `step_outputs` (more
results for the host). The trainer draws the CutMix boxes and the EMA decay on the host (`engine/masks.py`,
`engine/ema.py`).
"""
import mindspore as ms
from mindspore import ops

from ..engine.masks import box_keep_mask, mix_with_next
from ..engine.steps import ENTROPY_DROP, TrainStep, Wrapper, set_modes
from ..losses import confidence_unsup_loss, entropy_drop_unsup_loss
from ..losses.ohem import upsample_to
from .base import Method, TeacherOutputs, step_graphs


class TeacherPseudoLabels(Wrapper):
    """construct(image_u) -> (pseudo-label int32 (B,H,W), confidence float32 (B,H,W)) of the teacher in eval mode:
    argmax and max of softmax(pred upsampled to the image size), named on the host by `run` (`result`)."""
    result = TeacherOutputs

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher
        self.argmax = ops.ArgMaxWithValue(axis=1)

    def run(self, image_u):
        set_modes(eval_cells=[self, self.teacher])
        return self.result(*self(image_u))

    def construct(self, image_u):
        return self.pseudo_labels(self.teacher(image_u)[0], image_u.shape[2:])

    def pseudo_labels(self, pred, size):
        label, confidence = self.argmax(ops.softmax(upsample_to(pred, size), axis=1))
        return label.astype(ms.int32), confidence


class MeanTeacherStep(TrainStep):
    """One semi-supervised iteration (spec B.6 steps 2-10), one graph:

    construct(image_l, label_l, image_u, pseudo_u, conf_u, boxes, drop_percent, ema_decay, extra=())
    -> float32 [total, sup, unsup, method loss] (`step_outputs` may add more). The host builds the inputs as a
    `base.SemiInputs`; `extra` (an `ms.mutable` tuple, or nothing) holds the method's own inputs (PCR: the patch
    pixels; BRPG: its loss grid, noise, threshold and switch).

    `pseudo_u`/`conf_u` come from `TeacherPseudoLabels` on the weak view; `boxes` (B,4) are the CutMix boxes (empty
    = unmixed). The method's state is written after the SGD step (`update_state`), then the teacher follows the
    student (`ema`); both writes are tied to the gradients and the SGD result with `ops.depend`, so they cannot run
    before the reads they must follow.

    Results between the parts are tuples unpacked by name where they are used (`(losses, state, outputs)` below):
    MindSpore builds a NamedTuple inside a graph only through its Python fallback (a host call per step, refused
    under jit_syntax_level STRICT), so the names live on the host (`base.SemiInputs`, `base.TeacherOutputs`)."""

    def __init__(self, pair, optimizer, criterion, settings, ema, grad_sums=None, apply_update=True):
        super().__init__(pair, optimizer, criterion, settings, grad_sums, apply_update)
        self.ema = ema
        self.entropy_drop = settings.unsup_type == ENTROPY_DROP
        self.unsup_weight = settings.unsup_weight
        self.confid_thresh = settings.confid_thresh

    # ----------------------------------------------------------------------------------------- the method's hooks

    def method_loss(self, outputs, label_l, pseudo_u, conf_u, extra):
        """The method's loss on the student's `outputs` (pred, aux, rep, rep_clf) of cat(labeled, mixed unlabeled):
        (loss added to the total, loss logged, state for `update_state`, outputs for `step_outputs`), or None for
        the loss when the method has none (the mean teacher)."""
        return None, None, (), ()

    def update_state(self, state, after):
        """Writes of the method's state other than the weights and the teacher, ordered after `after` (the
        gradients); nothing here."""
        return after

    def step_outputs(self, losses, outputs):
        """The step's result: the loss vector here."""
        return losses

    # ------------------------------------------------------------------------------------------------ the step

    def unsupervised(self, pred_u, teacher_logits_u, pseudo_u, conf_u, drop_percent):
        if self.entropy_drop:
            return entropy_drop_unsup_loss(pred_u, teacher_logits_u, pseudo_u, drop_percent)
        return confidence_unsup_loss(pred_u, pseudo_u, conf_u, self.confid_thresh)

    def student_loss(self, image_all, label_l, pseudo_u, conf_u, teacher_logits_u, drop_percent, extra=()):
        """(L_sup + lambda_u * L_u + the method's loss, ((sup, unsup, method loss), state, outputs))."""
        outputs = self.student(image_all)
        pred, aux = outputs[0], outputs[1]
        num_labeled = label_l.shape[0]
        sup = self.supervised(pred[:num_labeled], None if aux is None else aux[:num_labeled], label_l)
        pred_u = upsample_to(pred[num_labeled:], label_l.shape[1:])
        unsup = self.unsupervised(pred_u, teacher_logits_u, pseudo_u, conf_u, drop_percent)
        total = sup + self.unsup_weight * unsup
        added, logged, state, method_outputs = self.method_loss(outputs, label_l, pseudo_u, conf_u, extra)
        if added is None:
            return total, ((sup, unsup, ops.zeros_like(sup)), state, method_outputs)
        return total + added, ((sup, unsup, logged), state, method_outputs)

    def construct(self, image_l, label_l, image_u, pseudo_u, conf_u, boxes, drop_percent, ema_decay, extra=()):
        # CutMix: the unlabeled images and their pseudo-labels and confidences, with the same boxes
        keep = box_keep_mask(boxes, image_u.shape[2], image_u.shape[3])
        image_all = ops.concat((image_l, mix_with_next(image_u, keep)), axis=0)
        pseudo_u, conf_u = mix_with_next(pseudo_u, keep), mix_with_next(conf_u, keep)
        # the teacher in train mode without gradient: the logits of entropy dropping
        teacher_pred = ops.stop_gradient(self.teacher(image_all)[0])
        teacher_logits_u = upsample_to(teacher_pred[label_l.shape[0]:], label_l.shape[1:])
        # the student's losses (and the method's) and their gradients
        grad_fn = ms.value_and_grad(self.student_loss, None, self.weights, has_aux=True)
        (total, (losses, state, outputs)), grads = grad_fn(image_all, label_l, pseudo_u, conf_u, teacher_logits_u,
                                                           drop_percent, extra)
        # SGD, then the method's state; the EMA writes teacher weights: after the teacher forward has read them
        updated = ops.depend(self.apply_gradients(grads), teacher_pred)
        updated = ops.depend(updated, self.update_state(state, grads))
        if self.apply_update:
            total = ops.depend(total, self.ema(ops.depend(ema_decay, updated)))
        else:  # the teacher follows once per update
            total = ops.depend(total, updated)
        return self.step_outputs(self.rank_mean(ops.stack((total,) + losses)), outputs)


class MeanTeacher(Method):
    title = "mean teacher (U2PL)"
    semi = True

    def semi_step(self, pair, optimizer, criterion, ema, sums, **kw):
        """One semi step graph (`kw`: apply_update=False for the accumulate variant)."""
        return MeanTeacherStep(pair, optimizer, criterion, self.plan.losses, ema, sums["grads"], **kw)

    def teacher_graph(self, teacher):
        return TeacherPseudoLabels(teacher)

    def graphs(self, pair, optimizer, criterion, ema, sums):
        graphs = step_graphs("semi step", lambda **kw: self.semi_step(pair, optimizer, criterion, ema, sums, **kw),
                             self.plan.accumulation)
        graphs["teacher pseudo-labels"] = self.teacher_graph(pair.teacher)
        return graphs
