"""PCR's training step (spec B.6 + C.3-C.4), one compiled graph per iteration. Top to bottom, with the file of each
part (`PCRStep` fills the mean teacher's hooks; `methods/mean_teacher.py` `MeanTeacherStep.construct` runs them):

1. the teacher's pseudo-labels and confidences on the weak view: the "teacher pseudo-labels" graph before this
   one (`TeacherPseudoLabels`, `methods/mean_teacher.py`);
2. CutMix of the unlabeled images, pseudo-labels and confidences with the host-drawn boxes (`engine/masks.py`);
3. the student forward on cat(labeled, mixed unlabeled); L_sup (`losses/ohem.py`) and L_u (`losses/unsupervised.py`)
   (`MeanTeacherStep.student_loss`);
4. the prototype loss, here (`method_loss`): the student's `rep_clf` features at one pixel per patch (`coords`, the
   step's `extra` input; bilinear as the upsampled map, `engine/masks.py`), the prototype head's logits
   (`models/proto_head.py`) against the GT on labeled images and the confident mixed pseudo-labels on unlabeled
   ones (`proto_targets`), cross-entropy (`losses/proto.py`); total = L_sup + lambda_u L_u + lambda_p L_proto;
5. the gradients and the SGD update (`engine/steps.py` `TrainStep.apply_gradients`, all-reduced with several
   devices);
6. the prototype momentum update from the detached features, after the gradients (`update_state`: statistics summed
   over accumulated micro-batches and over devices, then `CosineProtoHead.momentum_update`);
7. the teacher EMA (`engine/ema.py`), after the SGD update.
"""
from mindspore import ops

from ...engine.distributed import rank_sum
from ...engine.masks import gather_pixels, sample_bilinear_align_corners
from ...losses import proto_cross_entropy
from ...losses.ohem import IGNORE_INDEX
from ..mean_teacher import MeanTeacherStep


def proto_targets(label_l, pseudo_u, conf_u, coords, thresh):
    """Targets of the selected pixels (spec C.3): GT on labeled images, the mixed pseudo-label where the mixed
    confidence reaches `thresh` on unlabeled ones, 255 elsewhere; flattened in (image, pixel) order."""
    labeled = gather_pixels(label_l, coords)
    pseudo = gather_pixels(pseudo_u, coords)
    confident = gather_pixels(conf_u, coords) >= thresh
    pseudo = ops.where(confident, pseudo, ops.full_like(pseudo, IGNORE_INDEX))
    return ops.concat((labeled, pseudo), axis=0).reshape(-1)


class PCRStep(MeanTeacherStep):
    """The mean teacher's step with PCR's prototype loss and update. `extra` = mutable((coords,)): int32 (N, 2)
    patch pixels (`engine/masks.py` `patch_select_coords`). Returns float32 [total, sup, unsup, proto].

    `stat_sums`: SumBuffers of the prototype sums and counts with gradient accumulation (else None)."""

    def __init__(self, pair, optimizer, criterion, settings, ema, grad_sums=None, stat_sums=None, apply_update=True):
        super().__init__(pair, optimizer, criterion, settings, ema, grad_sums, apply_update)
        self.stat_sums = stat_sums
        self.proto_update = settings.proto_update
        self.proto_weight = settings.proto_weight
        self.rank_sum = rank_sum()  # prototype sums/counts over ranks (identity on one device)

    def method_loss(self, outputs, label_l, pseudo_u, conf_u, extra):
        (coords,) = extra
        rep_clf = outputs[3]
        feats = sample_bilinear_align_corners(rep_clf, coords, label_l.shape[1:])
        feats = feats.reshape(-1, feats.shape[-1])
        logits, match_index = self.student.proto_net(feats)
        target = proto_targets(label_l, pseudo_u, conf_u, coords, self.confid_thresh)
        proto = proto_cross_entropy(logits, target)
        return self.proto_weight * proto, proto, (feats, target, match_index), ()

    def update_state(self, state, after):
        if not self.proto_update:
            return after
        feats, target, match_index = state
        proto_net = self.student.proto_net
        sums, counts = proto_net.update_statistics(feats, target, target != IGNORE_INDEX, match_index)
        if self.stat_sums is not None:  # the update's statistics: every micro-batch saw the same weights
            if not self.apply_update:
                return self.stat_sums.add((ops.depend(sums, after), counts))
            sums, counts = self.stat_sums.take((sums, counts))
        sums, counts = self.rank_sum(sums), self.rank_sum(counts)  # the global batch's statistics
        return proto_net.momentum_update(ops.depend(sums, after), counts)
