"""Training losses (graph-compilable): supervised CE/OHEM, unsupervised L_u variants, prototype loss."""

from ms_semiseg.losses.ohem import (build_criterion, cross_entropy, ohem_cross_entropy, supervised_criterion,
                                     supervised_loss)
from ms_semiseg.losses.proto import proto_cross_entropy
from ms_semiseg.losses.unsupervised import (
    confidence_unsup_loss,
    drop_percent_schedule,
    entropy_drop_unsup_loss,
    masked_percentile,
)

__all__ = [
    "build_criterion",
    "confidence_unsup_loss",
    "cross_entropy",
    "drop_percent_schedule",
    "entropy_drop_unsup_loss",
    "masked_percentile",
    "ohem_cross_entropy",
    "proto_cross_entropy",
    "supervised_criterion",
    "supervised_loss",
]
