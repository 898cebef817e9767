"""BRPG (`trainer.prototype`): the mean teacher with BRPG's prototype loss on the `rep` head in place of PCR's head
(docs/brpg.md). The method is `train/brpg_step.py`'s `BRPGTraining` behind the Method interface; its parts:
- `train/brpg_step.py`: the semi step and teacher graphs (`BRPGSemiStep`, `BRPGTeacherOutputs`), the host side
  (`BRPGTraining`: clustering when due, per-step inputs, CPG enqueue, checkpoint arrays), `check_brpg_config`;
- `train/brpg.py` (`BRPGState`, `PrototypeBank`), `train/brpg_queue.py` (CPG sampling, feature queues),
  `train/brpg_cluster.py` (APO + k-means), `train/brpg_settings.py` (the validated section);
- `losses/brpg.py`: the sampling of loss pixels and L_pro inside the compiled step.
"""
from .step import BRPGTraining, check_brpg_config
from ...engine.distributed import context
from ...train.records import say
from ..base import ZERO_COORDS
from ..mean_teacher import MeanTeacher


class BRPG(MeanTeacher):
    title = "mean teacher + BRPG prototype loss (trainer.prototype)"
    has_state = True

    def __init__(self, cfg, plan, seed, student=None):
        super().__init__(cfg, plan, seed, student)
        self.training = BRPGTraining(cfg, plan, seed, context().world_size, log=say,
                                     feat_dim=student.decoder.head_planes)

    @classmethod
    def check_config(cls, cfg, plan):
        check_brpg_config(cfg, plan)

    def graphs(self, pair, optimizer, criterion, ema, sums):
        return self.training.graphs(pair, optimizer, criterion, self.plan.losses, ema)

    def step_inputs(self, epoch, iteration):
        return ZERO_COORDS, (self.training.step_inputs(epoch, iteration),)  # clusters first when due

    def after_step(self, outputs, teacher_outputs, label_l, epoch, iteration):
        return self.training.after_step(outputs, teacher_outputs, label_l, epoch, iteration)  # CPG sampling

    def checkpoint_arrays(self):
        return self.training.checkpoint_arrays()

    def load_checkpoint_arrays(self, arrays, source):
        self.training.load_checkpoint_arrays(arrays, source)
