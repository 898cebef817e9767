"""BRPG's compiled graphs (docs/brpg.md, "Wiring into the trainer"). Its training step, top to bottom:

1. the teacher on the weak view (`BRPGTeacherOutputs`): pseudo-labels, confidences and, from the same eval-mode
   forward, the 1/4-resolution logits and `rep` that CPG samples (`method.py` `after_step`);
2. CutMix, the student forward, L_sup and L_u: the mean teacher's step (`methods/mean_teacher.py`);
3. L_pro (`method_loss`): BRPG's loss cell (`state.py` `BRPGLoss`, formulas in `losses/brpg.py`) on the 256-d `rep`
   head (output index 2 of the model) of the labeled and mixed unlabeled images, weighted, times the loss switch;
4. the gradients, the SGD update;
5. the prototype EMA (`update_state`: `state.py` `PrototypeBank`) after the gradients;
6. the teacher EMA; the step also returns the student's detached `rep` and logits of the labeled images (CPG's
   labeled features).
One semi-step graph serves every semi-supervised epoch: before the loss phase its L_pro is multiplied by 0 (as
upstream adds 0 * rep.sum()) and its EMA sees only ignored targets, so the prototypes do not move.
"""
from typing import Any, NamedTuple


from mindspore import ops

from ...losses.ohem import IGNORE_INDEX
from ..mean_teacher import MeanTeacherStep, TeacherPseudoLabels


class BRPGTeacherResult(NamedTuple):
    """`BRPGTeacherOutputs`' result, named on the host."""
    pseudo_label: Any  # int32 (B, H, W)
    confidence: Any  # float32 (B, H, W)
    logits: Any  # float32 (B, C, h, w), 1/4 resolution
    rep: Any  # float32 (B, 256, h, w)


class BRPGStepResult(NamedTuple):
    """`BRPGSemiStep`'s result, named on the host (`method.py` `after_step`)."""
    losses: Any  # float32 [total, sup, unsup, proto]
    rep_l: Any  # the student's detached `rep` of the labeled images
    logits_l: Any  # its detached logits of the labeled images


class BRPGSemiStep(MeanTeacherStep):
    """One semi-supervised iteration with BRPG's prototype loss (brpg.md section 5).

    construct(image_l, label_l, image_u, pseudo_u, conf_u, boxes, drop_percent, ema_decay, extra)
    -> (losses float32 [total, sup, unsup, proto], rep_l (B_l, 256, h, w), logits_l (B_l, C, h, w)), the last
    two detached (`BRPGStepResult` on the host). extra = mutable((grid, noise_u, threshold, loss_on)) from
    `BRPGTraining.step_inputs`. `brpg_loss` is `BRPGState.loss_cell`, whose `bank` holds the prototypes."""

    def __init__(self, pair, optimizer, criterion, settings, ema, brpg_loss):
        super().__init__(pair, optimizer, criterion, settings, ema)
        self.brpg_loss = brpg_loss

    def method_loss(self, outputs, label_l, pseudo_u, conf_u, extra):
        pred, rep = outputs[0], outputs[2]
        grid, noise_u, threshold, loss_on = extra
        num_labeled = label_l.shape[0]
        proto, feats, target, scores, match = self.brpg_loss(rep[:num_labeled], label_l, grid, rep[num_labeled:],
                                                             pseudo_u, conf_u, noise_u, threshold)
        proto = proto * loss_on
        # before the loss phase the EMA must neither move nor create prototypes: every sample is ignored
        target = ops.where(loss_on > 0.5, target, ops.full_like(target, IGNORE_INDEX))
        labeled = (ops.stop_gradient(rep[:num_labeled]), ops.stop_gradient(pred[:num_labeled]))
        return proto, proto, (feats, target, scores, match), labeled

    def update_state(self, state, after):
        feats, target, scores, match = state
        return self.brpg_loss.bank(ops.depend(feats, after), target, scores, match)

    def step_outputs(self, losses, outputs):
        rep_l, logits_l = outputs
        return losses, rep_l, logits_l

    def run(self, *args):
        return BRPGStepResult(*super().run(*args))


class BRPGTeacherOutputs(TeacherPseudoLabels):
    """construct(image_u) -> (pseudo-label (B,H,W), confidence (B,H,W), logits (B,C,h,w), rep (B,256,h,w)): the
    teacher in eval mode on the weak view, once for the pseudo-labels and CPG's unlabeled features (upstream runs
    this forward twice; eval mode makes the two identical)."""
    result = BRPGTeacherResult

    def construct(self, image_u):
        pred, _, rep, _ = self.teacher(image_u)
        label, confidence = self.pseudo_labels(pred, image_u.shape[2:])
        return label, confidence, pred, rep
