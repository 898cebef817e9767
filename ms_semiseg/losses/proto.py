"""Prototype-predictor loss L_proto (spec C.3)."""

from ms_semiseg.losses.ohem import IGNORE_INDEX, cross_entropy


def proto_cross_entropy(proto_logits, target, ignore_index=IGNORE_INDEX):
    """Mean CE of the prototype head's logits over entries whose target is not 255 (0 when none).

    `proto_logits` is (N,C) with target (N,), or (B,C,h,w) at the selected pixels with target (B,h,w). The targets
    are the GT on labeled images and the teacher's pseudo-label on unlabeled ones, already set to 255 where the
    mixed confidence is below tau (the caller builds them).
    """
    return cross_entropy(proto_logits, target, ignore_index)
