"""PCR's cosine prototype head: C*K micro-prototypes, class score = max cosine over the class's K prototypes / temp."""
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
import mindspore as ms

from .layers import clamped_l2_norm, l2_normalize


class CosineProtoHead(nn.Cell):
    """`proto_list` row c*K + k is micro-prototype k of class c (the upstream pickle order).

    The bank is a non-trainable Parameter: it is saved with the model, carried into the teacher by the EMA, and
    moved only by `momentum_update` (no gradient).
    """

    def __init__(self, in_planes, num_classes, num_micro_proto, temperature=0.1, momentum=0.99):
        super().__init__()
        self.num_classes = num_classes
        self.num_micro_proto = num_micro_proto
        self.temperature = temperature
        self.momentum = momentum
        bank = np.random.standard_normal((num_classes * num_micro_proto, in_planes)).astype(np.float32)
        self.proto_list = Parameter(Tensor(bank), name="proto_list", requires_grad=False)
        self.argmax_k = ops.ArgMaxWithValue(axis=2)

    def construct(self, feats):
        """feats (N, D) -> (logits (N, C) = max_k cos / temp, matched micro-prototype index (N, C))."""
        return self.scores(feats)

    def scores(self, feats):
        # a plain method, not `self(...)`, so `dense` also compiles when called from another Cell's graph
        sim = ops.matmul(l2_normalize(feats, 1), l2_normalize(self.proto_list, 1).T)
        sim = sim.reshape(feats.shape[0], self.num_classes, self.num_micro_proto)
        index, value = self.argmax_k(sim)
        return value / self.temperature, index

    def dense(self, feat_map):
        """feat_map (B, D, H, W) -> logits (B, C, H, W), index (B, C, H, W): `scores` of every pixel, computed in
        NCHW as bank (C*K, D) @ features (D, H*W) per image, so that no full-resolution tensor is transposed (the
        NHWC form spent ~190 ms of a 5.5 s ResNet-101 375x500 evaluation forward in Transposes; logits differ from
        it by float32 rounding only, 1.7e-6 there, bench/profile_ops.py --eval).

        The pixels' norms divide the (C*K, H*W) dot products, not the (D, H*W) features before them: the same cosine
        up to float32 rounding, with a 6x smaller division (VOC: 84 scores against 512 channels per pixel). Op by op
        (`eval --strategy pynative/auto`) the division of the 512-channel map took 700 ms of a 4.5 s ResNet-101
        375x500 forward (`bench/profile_ops.py --eval --strategy pynative`)."""
        b, d, h, w = feat_map.shape
        bank = l2_normalize(self.proto_list, 1)
        if b == 1:
            feats = feat_map.reshape(d, h * w)
            sim = (ops.matmul(bank, feats) / clamped_l2_norm(feats, 0)).reshape(1, -1, h * w)
        else:
            feats = feat_map.reshape(b, d, h * w)
            sim = ops.stack([ops.matmul(bank, feats[i]) for i in range(b)]) / clamped_l2_norm(feats, 1)
        sim = sim.reshape(b, self.num_classes, self.num_micro_proto, h, w)
        index, value = self.argmax_k(sim)
        return value / self.temperature, index

    def update_statistics(self, feats, target, valid, match_index):
        """Per micro-prototype feature sums and counts of the valid pixels, each assigned to the nearest
        micro-prototype of its own class. Returned separately so data-parallel training can all-reduce them.

        feats (N, D) raw features; target (N,) class ids; valid (N,) bool; match_index (N, C) from `construct`."""
        target = ops.where(valid, target, ops.zeros_like(target)).astype(ms.int32)
        k_star = ops.gather_elements(match_index.astype(ms.int32), 1, target.reshape(-1, 1)).reshape(-1)
        slot = target * self.num_micro_proto + k_star
        onehot = ops.one_hot(slot, self.proto_list.shape[0], Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
        onehot = onehot * valid.astype(ms.float32).reshape(-1, 1)
        return ops.matmul(onehot.T, feats), onehot.sum(axis=0)

    def momentum_update(self, sums, counts):
        """proto <- m * proto + (1 - m) * mean feature, for every micro-prototype that received pixels."""
        mean = sums / ops.maximum(counts, 1.0).reshape(-1, 1)
        moved = self.momentum * self.proto_list + (1.0 - self.momentum) * mean
        new_bank = ops.where((counts > 0).reshape(-1, 1), moved, self.proto_list)
        return ops.assign(self.proto_list, new_bank)
