"""BRPG inside the shared trainer: `trainer.prototype` switches it on (docs/brpg.md, "Wiring into the trainer").

The trainer stays one trainer; with BRPG it swaps two graphs and calls `BRPGTraining` around each semi step:
- `BRPGSemiStep` is `SemiStep` with BRPG's L_pro (on the 256-d `rep` head, output index 2 of the model) in place
  of PCR's prototype head: the weighted L_pro joins the total loss inside the compiled step, the prototype EMA
  runs after the gradients, and the step also returns the student's detached `rep` and logits of the labeled
  images (CPG's labeled features).
- `BRPGTeacherOutputs` is `TeacherPseudoLabels` that also returns the teacher's 1/4-resolution logits and `rep`
  on the weak view (CPG's unlabeled features).
- `BRPGTraining` (host): clustering at the start of the first loss iteration, the per-step inputs (loss grid,
  noise, ramped threshold, loss switch), the CPG enqueue after each sampling-window step, and the state saved in
  `last.ckpt` (queues while they exist, prototypes, csp EMA, clustered flag).
One semi-step graph serves every semi-supervised epoch: before the loss phase its L_pro is multiplied by 0 (as
upstream adds 0 * rep.sum()) and its EMA sees only ignored targets, so the prototypes do not move.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

from ...config import get
from ...errors import UserError
from ...losses.ohem import IGNORE_INDEX
from ...models.decoder import HEAD_PLANES
from .state import BRPGState, brpg_enabled
from .settings import SECTION, BRPGSettings
from ...engine.distributed import context
from ...engine.steps import SemiStep, TeacherPseudoLabels

# BRPG's per-step Generators: keys (seed, epoch, iteration, rank, purpose, _RNG_TAG). numpy's SeedSequence
# ignores trailing zeros, so the non-zero last field keeps them apart from the trainer's and the pipeline's
# shorter keys (masks.step_rng, pipeline._rng).
BRPG_SAMPLING, BRPG_LOSS_PIXELS = 0, 1
_RNG_TAG = 0xB5B6
CHECKPOINT_PREFIX = "brpg."
_QUEUE_ARRAYS = ("queue_rows", "queue_ptr", "queue_fill")


class BRPGSemiStep(SemiStep):
    """One semi-supervised iteration with BRPG's prototype loss (brpg.md section 5).

    construct(image_l, label_l, image_u, pseudo_u, conf_u, boxes, coords, drop_percent, ema_decay, extra)
    -> (losses float32 [total, sup, unsup, proto], rep_l (B_l, 256, h, w), logits_l (B_l, C, h, w)), the last
    two detached. extra = mutable((grid, noise_u, threshold, loss_on)) from `BRPGTraining.step_inputs`; `coords`
    (PCR's patch pixels) is unused. `brpg_loss` is `BRPGState.loss_cell`, whose `bank` holds the prototypes."""

    def __init__(self, pair, optimizer, criterion, settings, ema, brpg_loss):
        super().__init__(pair, optimizer, criterion, settings, ema, use_proto=False)
        self.brpg_loss = brpg_loss

    def student_loss(self, image_all, label_l, pseudo_u, conf_u, teacher_logits_u, coords, drop_percent, extra=()):
        pred, aux, rep, _ = self.student(image_all)
        total, sup, unsup = self.base_losses(pred, aux, label_l, pseudo_u, conf_u, teacher_logits_u, drop_percent)
        grid, noise_u, threshold, loss_on = extra
        num_labeled = label_l.shape[0]
        proto, feats, target, scores, match = self.brpg_loss(rep[:num_labeled], label_l, grid, rep[num_labeled:],
                                                             pseudo_u, conf_u, noise_u, threshold)
        proto = proto * loss_on
        # before the loss phase the EMA must neither move nor create prototypes: every sample is ignored
        target = ops.where(loss_on > 0.5, target, ops.full_like(target, IGNORE_INDEX))
        labeled = (ops.stop_gradient(rep[:num_labeled]), ops.stop_gradient(pred[:num_labeled]))
        return total + proto, (sup, unsup, proto, feats, target, scores, match) + labeled

    def update_state(self, parts, after):
        feats, target, scores, match = parts[3:7]
        return self.brpg_loss.bank(ops.depend(feats, after), target, scores, match)

    def step_outputs(self, losses, parts):
        return losses, parts[7], parts[8]


class BRPGTeacherOutputs(TeacherPseudoLabels):
    """construct(image_u) -> (pseudo-label (B,H,W), confidence (B,H,W), logits (B,C,h,w), rep (B,256,h,w)): the
    teacher in eval mode on the weak view, once for the pseudo-labels and CPG's unlabeled features (upstream runs
    this forward twice; eval mode makes the two identical)."""

    def construct(self, image_u):
        pred, _, rep, _ = self.teacher(image_u)
        label, confidence = self.pseudo_labels(pred, image_u.shape[2:])
        return label, confidence, pred, rep


def check_brpg_config(cfg, plan):
    """UserError before anything is written when `trainer.prototype` cannot run with this config."""
    if not brpg_enabled(cfg):
        return
    if not plan.semi:
        raise UserError(f"{SECTION}: BRPG trains inside the mean teacher, expected a trainer.unsupervised section "
                        "and trainer.sup_only_epoch < trainer.epochs")
    if plan.accumulation > 1:
        raise UserError(f"trainer.grad_accumulation: {plan.accumulation} with {SECTION} (BRPG) is not supported, "
                        "expected 1 (BRPG's feature queues and clustering run once per iteration)")
    BRPGSettings.from_config(cfg, get(cfg, "net.num_classes"))


class BRPGTraining:
    """BRPG's host side in the trainer, in call order per semi-supervised iteration (epoch e, iteration i):
    `step_inputs(e, i)` (clusters first when due) -> the semi step -> `after_step(...)` (CPG enqueue in the
    sampling window). `checkpoint_arrays()` / `load_checkpoint_arrays()` carry the state through last.ckpt."""

    def __init__(self, cfg, plan, seed, world_size=1, log=print, feat_dim=HEAD_PLANES):
        self.plan, self.seed, self.log = plan, seed, log
        self.rank = context().rank
        self.state = BRPGState(cfg, get(cfg, "net.num_classes"), feat_dim, world_size, log)

    def graphs(self, pair, optimizer, criterion, loss_settings, ema):
        """The trainer's "semi step" and "teacher pseudo-labels" graphs for BRPG."""
        return {"semi step": BRPGSemiStep(pair, optimizer, criterion, loss_settings, ema, self.state.loss_cell),
                "teacher pseudo-labels": BRPGTeacherOutputs(pair.teacher)}

    def step_inputs(self, epoch, iteration):
        """The semi step's `extra` input; runs the clustering at the first iteration of the loss phase."""
        state = self.state
        if state.should_cluster(epoch, iteration):
            self.log(f"BRPG: clustering the sampled features at epoch {epoch + 1}, iteration {iteration + 1}; "
                     "the prototype loss is active from this step")
            state.cluster()
        grid, noise_u, threshold = state.step_inputs(self._rng(epoch, iteration, BRPG_LOSS_PIXELS), epoch,
                                                     iteration, self.plan.iterations, self.plan.batch_size)
        loss_on = Tensor(1.0 if state.loss_active(epoch) else 0.0, ms.float32)
        return ms.mutable((grid, noise_u, threshold, loss_on))

    def after_step(self, outputs, teacher_outputs, label_l, epoch, iteration):
        """CPG sampling of this step's features into the queues (sampling window only); returns the losses."""
        losses, rep_l, logits_l = outputs
        if self.state.in_sampling_window(epoch):
            _, _, logits_u, rep_u = teacher_outputs
            self.state.enqueue(rep_l, logits_l, label_l, rep_u, logits_u,
                               self._rng(epoch, iteration, BRPG_SAMPLING))
        return losses

    def _rng(self, epoch, iteration, purpose):
        """The noise of one step: replayed by a resumed run; each device draws its own (its images differ)."""
        return np.random.default_rng([self.seed, epoch, iteration, self.rank, purpose, _RNG_TAG])

    # ------------------------------------------------------------------------------------------- checkpoint

    def checkpoint_arrays(self):
        """{name: array} for last.ckpt. MindSpore drops zero-size tensors from checkpoints, so the queue arrays
        are saved only while the queues exist (before the clustering)."""
        arrays = self.state.state_dict()
        if arrays["queue_rows"].size == 0:
            arrays = {k: v for k, v in arrays.items() if k not in _QUEUE_ARRAYS}
        return {CHECKPOINT_PREFIX + name: value for name, value in arrays.items()}

    def load_checkpoint_arrays(self, arrays, source="last.ckpt"):
        """Restores `checkpoint_arrays()` output (UserError when it is missing or from another config)."""
        state = {k[len(CHECKPOINT_PREFIX):]: v for k, v in arrays.items() if k.startswith(CHECKPOINT_PREFIX)}
        if "queue_rows" not in state:
            classes, dim = self.state.num_classes, self.state.feat_dim
            state.update(queue_rows=np.zeros((2, classes, 0, dim + 1), np.float32),
                         queue_ptr=np.zeros((2, classes), np.int32), queue_fill=np.zeros((2, classes), np.int32))
        self.state.load_state_dict(state, source)
