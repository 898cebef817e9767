"""BRPG (`trainer.prototype`): the mean teacher with BRPG's prototype loss on the `rep` head in place of PCR's head
(docs/brpg.md). Its training step is `step.py` (read its docstring first); this file is its host side:
- `BRPGTraining`: clustering at the start of the first loss iteration, the per-step inputs (loss grid, noise,
  ramped threshold, loss switch), the CPG enqueue after each sampling-window step, and the state saved in
  `last.ckpt` (queues while they exist, prototypes, csp EMA, clustered flag);
- `BRPG`: `BRPGTraining` behind the Method interface; `check_brpg_config`: the start-up checks, which give the
  validated `BRPGSettings` (`plan.method_settings`).
The rest: `state.py` (`BRPGState`, `PrototypeBank`, the loss cell), `queue.py` (CPG sampling, feature queues),
`cluster.py` (APO + k-means), `settings.py` (the validated section), `losses/brpg.py` (the loss formulas).
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor

from ...engine.distributed import context
from ...engine.seeds import Stream, stream_rng
from ...errors import UserError
from ...models.decoder import HEAD_PLANES
from ...engine.console import say
from ..mean_teacher import MeanTeacher
from .settings import SECTION, BRPGSettings, brpg_enabled
from .state import BRPGState
from .step import BRPGSemiStep, BRPGTeacherOutputs

CHECKPOINT_PREFIX = "brpg."
_QUEUE_ARRAYS = ("queue_rows", "queue_ptr", "queue_fill")


def check_brpg_config(cfg, plan):
    """BRPGSettings of the config (None without `trainer.prototype`); UserError before anything is written when
    it cannot run with this config and plan."""
    if not brpg_enabled(cfg):
        return None
    if not plan.semi:
        raise UserError(f"{SECTION}: BRPG trains inside the mean teacher, expected a trainer.unsupervised section "
                        "and trainer.sup_only_epoch < trainer.epochs")
    if plan.accumulation > 1:
        raise UserError(f"trainer.grad_accumulation: {plan.accumulation} with {SECTION} (BRPG) is not supported, "
                        "expected 1 (BRPG's feature queues and clustering run once per iteration)")
    height, width = plan.crop
    if min(height, width) < 2:
        raise UserError(f"dataset.train.crop.size={[height, width]}: BRPG's labeled grid needs the crop, expected "
                        "[H, W] of at least 2 pixels")
    return BRPGSettings.from_config(cfg, plan.num_classes)


class BRPGTraining:
    """BRPG's host side in the trainer, in call order per semi-supervised iteration (epoch e, iteration i):
    `step_inputs(e, i)` (clusters first when due) -> the semi step -> `after_step(...)` (CPG enqueue in the
    sampling window). `checkpoint_arrays()` / `load_checkpoint_arrays()` carry the state through last.ckpt."""

    def __init__(self, settings, plan, seed, world_size=1, log=print, feat_dim=HEAD_PLANES):
        """`settings`: the validated BRPGSettings; `plan`: the TrainPlan (classes, crop, epochs, iterations)."""
        self.plan, self.seed, self.log = plan, seed, log
        self.rank = context().rank
        self.state = BRPGState(settings, plan.num_classes, plan.crop, plan.epochs, feat_dim, world_size, log)

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
        grid, noise_u, threshold = state.step_inputs(self._rng(Stream.BRPG_LOSS_PIXELS, epoch, iteration), epoch,
                                                     iteration, self.plan.iterations, self.plan.batch_size)
        loss_on = Tensor(1.0 if state.loss_active(epoch) else 0.0, ms.float32)
        return ms.mutable((grid, noise_u, threshold, loss_on))

    def after_step(self, outputs, teacher_outputs, label_l, epoch, iteration):
        """CPG sampling of this step's features into the queues (sampling window only); returns the losses.
        `outputs`: the semi step's `BRPGStepResult`; `teacher_outputs`: the teacher graph's `BRPGTeacherResult`."""
        if self.state.in_sampling_window(epoch):
            self.state.enqueue(outputs.rep_l, outputs.logits_l, label_l, teacher_outputs.rep, teacher_outputs.logits,
                               self._rng(Stream.BRPG_SAMPLING, epoch, iteration))
        return outputs.losses

    def _rng(self, stream, epoch, iteration):
        """The noise of one step: replayed by a resumed run; each device draws its own (its images differ)."""
        return stream_rng(stream, self.seed, epoch, iteration, self.rank)

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


class BRPG(MeanTeacher):
    title = "mean teacher + BRPG prototype loss (trainer.prototype)"
    has_state = True

    def __init__(self, plan, seed, student=None):
        super().__init__(plan, seed, student)
        self.training = BRPGTraining(plan.method_settings, plan, seed, context().world_size, log=say,
                                     feat_dim=student.decoder.head_planes)

    @classmethod
    def settings_from_config(cls, cfg, plan):
        return check_brpg_config(cfg, plan)

    def graphs(self, pair, optimizer, criterion, ema, sums):
        return self.training.graphs(pair, optimizer, criterion, self.plan.losses, ema)

    def step_inputs(self, epoch, iteration):
        return self.training.step_inputs(epoch, iteration)  # clusters first when due

    def after_step(self, outputs, teacher_outputs, label_l, epoch, iteration):
        return self.training.after_step(outputs, teacher_outputs, label_l, epoch, iteration)  # CPG sampling

    def checkpoint_arrays(self):
        return self.training.checkpoint_arrays()

    def load_checkpoint_arrays(self, arrays, source):
        self.training.load_checkpoint_arrays(arrays, source)
