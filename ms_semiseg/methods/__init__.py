"""The training methods behind one interface (`base.Method`), chosen by the config:

| method | config | module |
| --- | --- | --- |
| supervised only | no `trainer.unsupervised` (or `trainer.sup_only_epoch >= trainer.epochs`) | `supervised.py` |
| mean teacher (U2PL) | `trainer.unsupervised`, no `net.proto_head` | `mean_teacher.py` |
| PCR | `trainer.unsupervised` and `net.proto_head` | `pcr/` (`step.py`: its training step) |
| BRPG | `trainer.unsupervised` and `trainer.prototype` | `brpg/` (`step.py`: its training step) |

docs/architecture.md shows where each part of an iteration lives.
"""
from .brpg.settings import brpg_enabled
from .base import Method
from .mean_teacher import MeanTeacher
from .pcr.method import PCR
from .supervised import Supervised


def method_class(cfg, plan):
    """The Method subclass the config and its plan (`train/plan.py`) ask for."""
    if brpg_enabled(cfg):  # first: its settings_from_config names what BRPG is missing
        from .brpg.method import BRPG  # imported here: BRPG's k-means (sklearn) costs ~1.5 s at every start-up
        return BRPG
    if not plan.semi:
        return Supervised
    return PCR if plan.use_proto else MeanTeacher


def build_method(plan, seed, student=None):
    """The run's method (`plan.method`, with `plan.method_settings`); `student`: the student model (BRPG sizes its
    state by the model's `rep` head)."""
    return plan.method(plan, seed, student)


__all__ = ["Method", "method_class", "build_method"]
