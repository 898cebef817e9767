"""BRPG (boundary-refined prototype generation) as a training option: `trainer.prototype` in the config.

`BRPGState` is the only object the trainer needs; see its docstring for the call order. The parts:
- `brpg_queue.py`: CPG sampling into per-class high/low FIFO queues (compiled, once per sampling iteration);
- `brpg_cluster.py`: APO + MiniBatchKMeans + padding (host, once, at the end of the sampling window);
- `PrototypeBank` (here): the padded prototypes [C, M, D] with a validity mask, their scores and EMA update;
- `ms_semiseg.losses.brpg`: the sampling of loss pixels and L_pro (compiled inside the training step).
Decisions on upstream's quirks: docs/brpg.md.
"""
import logging

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
import mindspore as ms

from ...errors import UserError
from ...losses.brpg import (confident_samples, grid_coords, grid_samples, masked_class_scores, prototype_loss,
                           pseudo_threshold_at, targets_with_prototypes)
from ...losses.ohem import IGNORE_INDEX
from .cluster import build_prototypes
from .queue import HIGH, LOW, CPGSampler, FeatureQueues

LOGGER = logging.getLogger(__name__)


def segment_sums(feats, segment, weight, num_segments):
    """(sums (S, D), weights (S,)) of weighted rows per segment id, by a one-hot matmul (fixed shapes, one kernel;
    the same idea as CosineProtoHead.update_statistics). Returned unreduced so data parallel can all-reduce them."""
    onehot = ops.one_hot(segment, num_segments, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
    onehot = onehot * weight.reshape(-1, 1)
    return ops.matmul(onehot.T, feats), onehot.sum(axis=0)


class PrototypeBank(nn.Cell):
    """BRPG prototypes: `protos` (C, M, D) raw features, `valid` (C, M) 0/1; slots [0, max_high) high, the rest low.

    construct(feats, target, scores, match) is the per-step EMA (brpg.md section 5): each sample (target != 255)
    moves the valid prototype of its own class that it is nearest to (cosine; `match` from `scores`):
    P <- a * P + (1 - a) * weighted mean of its samples, weight 1, or `fault_weight` for samples that the
    prototypes classify wrongly. A class without any valid prototype gets slot 0 := the mean of its samples (the
    fallback for classes that had no queued features). `reduce` (AllReduce or None) sums the statistics over
    devices first, so every device keeps the same prototypes."""

    def __init__(self, num_classes, slots, feat_dim, momentum, fault_weight, reduce=None):
        super().__init__()
        self.num_classes = num_classes
        self.slots = slots
        self.momentum = momentum
        self.fault_weight = fault_weight
        self.reduce = reduce
        self.protos = Parameter(Tensor(np.zeros((num_classes, slots, feat_dim), np.float32)), name="brpg_protos",
                                requires_grad=False)
        self.valid = Parameter(Tensor(np.zeros((num_classes, slots), np.float32)), name="brpg_proto_valid",
                               requires_grad=False)

    def scores(self, feats):
        """feats (N, D) -> (s (N, C) max cosine over the class's valid prototypes, winning slot (N, C))."""
        return masked_class_scores(feats, self.protos, self.valid)

    def update_statistics(self, feats, target, scores, match):
        """(sums (C*M, D), weights (C*M,)) of the samples assigned to each slot (see the class docstring)."""
        labeled = target != IGNORE_INDEX
        safe = ops.where(labeled, target, ops.zeros_like(target)).astype(ms.int32)
        has_proto = ops.gather(self.valid.max(axis=1) > 0.5, safe, 0)
        own_slot = ops.gather_elements(match, 1, safe.reshape(-1, 1)).reshape(-1)
        slot = safe * self.slots + ops.where(has_proto, own_slot, ops.zeros_like(own_slot))
        predicted = ops.Argmax(axis=1, output_type=ms.int32)(scores)
        right = ops.logical_or(predicted == safe, ops.logical_not(has_proto))
        weight = ops.where(right, ops.ones_like(scores[:, 0]), ops.full_like(scores[:, 0], self.fault_weight))
        return segment_sums(feats, slot, weight * labeled.astype(ms.float32), self.num_classes * self.slots)

    def momentum_update(self, sums, counts):
        dim = self.protos.shape[2]
        bank = self.protos.reshape(-1, dim)
        valid = self.valid.reshape(-1)
        mean = sums / ops.maximum(counts, 1e-12).reshape(-1, 1)
        moved = self.momentum * bank + (1.0 - self.momentum) * mean
        seen = (counts > 0).reshape(-1, 1)
        new_bank = ops.where(seen, ops.where(valid.reshape(-1, 1) > 0.5, moved, mean), bank)
        new_valid = ops.maximum(valid, (counts > 0).astype(ms.float32))
        ops.assign(self.protos, new_bank.reshape(self.protos.shape))
        return ops.assign(self.valid, new_valid.reshape(self.valid.shape))

    def construct(self, feats, target, scores, match):
        sums, counts = self.update_statistics(feats, target, scores, match)
        if self.reduce is not None:
            sums, counts = self.reduce(sums), self.reduce(counts)
        return self.momentum_update(sums, counts)


class BRPGLoss(nn.Cell):
    """lambda * L_pro of one step (brpg.md section 5), for the trainer's compiled step.

    construct(rep_l, label_l, grid, rep_u, pseudo_u, conf_u, noise_u, threshold)
    -> (loss, feats, target, scores, match), the last four (detached) for `PrototypeBank` after the step.
      rep_l / rep_u (B, D, h, w): the student's `rep` on the labeled / strong (CutMixed) images (with gradient);
      label_l (B_l, H, W); grid int32 (n, 2) from `grid_coords`; pseudo_u / conf_u (B_u, H, W): the teacher's
      pseudo-labels and confidences on the weak view, mixed with the same boxes; noise_u (B_u, H, W) uniform;
      threshold: the ramped confidence threshold (float32 scalar)."""

    def __init__(self, bank, settings, weight):
        super().__init__()
        self.bank = bank
        self.tau = settings.cosine_tao
        self.per_image = settings.unsup_sample_num
        self.weight = weight

    def construct(self, rep_l, label_l, grid, rep_u, pseudo_u, conf_u, noise_u, threshold):
        feats_l, target_l = grid_samples(rep_l, label_l.astype(ms.int32), grid)
        feats_u, target_u = confident_samples(rep_u, pseudo_u, conf_u, noise_u, threshold,
                                              self.per_image * rep_u.shape[0])
        feats = ops.concat((feats_l, feats_u), axis=0)
        target = ops.concat((target_l, target_u))
        scores, match = self.bank.scores(feats)
        trainable = targets_with_prototypes(target, self.bank.valid)
        loss = self.weight * prototype_loss(scores, trainable, feats_l.shape[0], self.tau)
        return loss, ops.stop_gradient(feats), target, ops.stop_gradient(scores), match


class EnqueueStep(nn.Cell):
    """CPG rows of this device -> (all devices' rows, in rank order, when `gather` is AllGather) -> the queues.

    construct(rep_l, logits_l, label_l, rep_u, logits_u, noise_l, noise_u) -> rows that arrived per queue (2C,)."""

    def __init__(self, sampler, queues, gather=None):
        super().__init__()
        self.sampler = sampler
        self.queues = queues
        self.gather = gather

    def construct(self, rep_l, logits_l, label_l, rep_u, logits_u, noise_l, noise_u):
        feats, conf, label, set_id, valid = self.sampler(rep_l, logits_l, label_l, rep_u, logits_u, noise_l, noise_u)
        if self.gather is not None:
            feats, conf, label = self.gather(feats), self.gather(conf), self.gather(label)
            set_id, valid = self.gather(set_id), self.gather(valid)
        return self.queues(feats, conf, label, set_id, valid)


def uniform_noise(rng, shape):
    """float32 uniform in (0, 1] (a zero would make -log infinite)."""
    return (1.0 - rng.random(shape, dtype=np.float32)).astype(np.float32)


class BRPGState:
    """BRPG's state and the calls the trainer makes, in this order (epoch e, iteration i, E epochs):

    1. Construction, before training: `BRPGState(settings, num_classes, crop, epochs, feat_dim, world_size)`
       (`settings`: the validated BRPGSettings; `crop`: (H, W) of the training crop); on resume
       `load_state_dict(saved)` (numpy arrays from `state_dict()`, saved in the checkpoint).
    2. Sampling window, `in_sampling_window(e)` (sample_delay <= e < sample_delay + sample_last; always a
       semi-supervised epoch): the step trains without L_pro (upstream adds 0 * rep.sum()); then, with that
       step's detached outputs, `enqueue(rep_l, logits_l, label_l, rep_u_teacher, logits_u_teacher, rng)`:
       rep_l / logits_l from the student's train-mode forward on the labeled images (1/4 resolution), label_l the
       full-resolution GT, rep_u_teacher / logits_u_teacher from the teacher's eval-mode forward on the weak
       unlabeled view (the pseudo-label forward). Runs the compiled `enqueue_step` (rows all-gathered across
       devices when world_size > 1, csp statistics all-reduced when sync_prototype_ema).
    3. `should_cluster(e, i)` is True at the first iteration with e >= sample_delay + sample_last until
       `cluster()` has run: call `cluster()` (host, APO + k-means, frees the queues) before that step's loss.
    4. `loss_active(e)`: inside the compiled step, `loss_cell(rep_l, label_l, grid, rep_u, pseudo_u, conf_u,
       noise_u, threshold)` gives the weighted L_pro to add to the total, plus (feats, target, scores, match);
       after the gradients, `bank(feats, target, scores, match)` applies the prototype EMA (all-reduced across
       devices when sync_prototype_ema). Host inputs of that step: `step_inputs(rng, e, i, iters_per_epoch,
       batch_u)` -> (grid, noise_u, threshold). `loss(...)` / `ema_update(...)` are the same calls for eager use.
    5. Checkpoints: `state_dict()` at any point (queues only while they exist: ~2*C*queue_len*(D+1) floats,
       1.3 GB for VOC; prototypes, validity, csp confidence EMA, the clustered flag).
    The queues, prototypes and csp EMA are not part of the model and are not followed by the teacher.
    """

    def __init__(self, settings, num_classes, crop, epochs, feat_dim=256, world_size=1, log=None):
        self.settings = settings
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.world_size = world_size
        self.epochs = epochs
        self.log = log or LOGGER.info
        settings = self.settings
        sync = world_size > 1 and settings.sync_prototype_ema
        self._reduce = ops.AllReduce() if sync else None
        self._gather = ops.AllGather() if world_size > 1 else None
        self.crop_size = tuple(crop)
        self.grid = Tensor(grid_coords(*self.crop_size, settings.grid_num))
        self.bank = PrototypeBank(num_classes, settings.slots, feat_dim, settings.prototype_ema_decay,
                                  settings.effective_fault_weight, self._reduce)
        self.loss_cell = BRPGLoss(self.bank, settings, settings.loss_scale(world_size))
        self.sampler = CPGSampler(settings, num_classes, self._reduce)
        self.queues = None  # allocated at the first enqueue (or by load_state_dict), freed by cluster()
        self.enqueue_step = None
        self.clustered = False

    # ------------------------------------------------------------------------------------------- schedule

    def in_sampling_window(self, epoch):
        return self.settings.sample_delay <= epoch < self.settings.sampling_end

    def loss_active(self, epoch):
        return epoch >= self.settings.sampling_end

    def should_cluster(self, epoch, step):
        """Upstream clusters at (sampling_end, step 0); keyed on the clustered flag so a resumed run that stopped
        between the window's last step and the clustering still clusters once (`step` only documents the call)."""
        del step
        return self.loss_active(epoch) and not self.clustered

    # ------------------------------------------------------------------------------------------- sampling

    def _allocate_queues(self):
        if self.queues is None:
            self.queues = FeatureQueues(self.num_classes, self.feat_dim, self.settings.queue_len)
            self.enqueue_step = EnqueueStep(self.sampler, self.queues, self._gather)

    def enqueue(self, rep_l, logits_l, label_l, rep_u, logits_u, rng):
        """One iteration's CPG sampling into the queues (see the class docstring); returns per-queue arrivals."""
        if self.clustered:
            raise RuntimeError("BRPG: enqueue after clustering; the queues no longer exist")
        self._allocate_queues()
        pixels_l = int(np.prod(rep_l.shape)) // rep_l.shape[1]
        pixels_u = int(np.prod(rep_u.shape)) // rep_u.shape[1]
        noise_l = Tensor(uniform_noise(rng, pixels_l))
        noise_u = Tensor(uniform_noise(rng, pixels_u))
        label_l = label_l if isinstance(label_l, Tensor) else Tensor(np.asarray(label_l))
        return self.enqueue_step(rep_l, logits_l, label_l.astype(ms.int32), rep_u, logits_u, noise_l, noise_u)

    def queue_contents(self):
        """queues[s][c] = (features, confidences), oldest first (empty arrays before any enqueue)."""
        empty = (np.zeros((0, self.feat_dim), np.float32), np.zeros(0, np.float32))
        if self.queues is None:
            return [[empty] * self.num_classes for _ in (HIGH, LOW)]
        return [[self.queues.contents(s, c) for c in range(self.num_classes)] for s in (HIGH, LOW)]

    # ------------------------------------------------------------------------------------------- clustering

    def cluster(self, seed=None):
        """APO + k-means over the queues -> prototypes; frees the queues. seed: random_state of every k-means
        (default `kmeans_random_state`, upstream 0). Returns the report lines (also logged)."""
        seed = self.settings.kmeans_random_state if seed is None else seed
        protos, valid, messages = build_prototypes(self.queue_contents(), self.settings, self.num_classes,
                                                   self.feat_dim, seed)
        self.bank.protos.set_data(Tensor(protos))
        self.bank.valid.set_data(Tensor(valid))
        self.queues = None
        self.enqueue_step = None
        self.clustered = True
        for message in messages:
            self.log(f"BRPG clustering: {message}")
        return messages

    # ------------------------------------------------------------------------------------------- loss

    def step_inputs(self, rng, epoch, iteration, iters_per_epoch, batch_u):
        """Host inputs of one loss step: (grid (n, 2) int32, noise_u (B_u, H, W) float32, threshold scalar)."""
        settings = self.settings
        height, width = self.crop_size
        threshold = pseudo_threshold_at(epoch * iters_per_epoch + iteration, iters_per_epoch, self.epochs,
                                        settings.pseudo_threshold, settings.pseudo_threshold_end,
                                        settings.ramp_start_epoch)
        noise = Tensor(rng.random((batch_u, height, width), dtype=np.float32))
        return self.grid, noise, Tensor(threshold, ms.float32)

    def loss(self, rep_l, label_l, rep_u, pseudo_u, conf_u, noise_u, threshold):
        """Eager form of `loss_cell` with this run's grid."""
        return self.loss_cell(rep_l, label_l, self.grid, rep_u, pseudo_u, conf_u, noise_u, threshold)

    def ema_update(self, feats, target, scores, match):
        return self.bank(feats, target, scores, match)

    # ------------------------------------------------------------------------------------------- checkpoint

    def state_dict(self):
        """Numpy arrays: clustered (int32 scalar), confidence_ema (C,), protos (C, M, D), proto_valid (C, M),
        queue_rows (2, C, L or 0, D + 1), queue_ptr (2, C), queue_fill (2, C) (length 0 when no queues exist)."""
        state = {"clustered": np.array(int(self.clustered), np.int32),
                 "confidence_ema": self.sampler.confidence_ema.asnumpy(),
                 "protos": self.bank.protos.asnumpy(), "proto_valid": self.bank.valid.asnumpy()}
        if self.queues is not None:
            state.update(self.queues.state_arrays())
        else:
            zeros = np.zeros((2, self.num_classes), np.int32)
            state.update({"queue_rows": np.zeros((2, self.num_classes, 0, self.feat_dim + 1), np.float32),
                          "queue_ptr": zeros, "queue_fill": zeros.copy()})
        return state

    def state_shapes(self):
        """Shapes `load_state_dict` accepts (queue_rows may also have length 0 on axis 2: no queues)."""
        classes, slots = self.num_classes, self.settings.slots
        return {"clustered": (), "confidence_ema": (classes,), "protos": (classes, slots, self.feat_dim),
                "proto_valid": (classes, slots), "queue_ptr": (2, classes), "queue_fill": (2, classes),
                "queue_rows": (2, classes, self.settings.queue_len, self.feat_dim + 1)}

    def load_state_dict(self, state, source="checkpoint"):
        """Restores `state_dict()` output; a UserError names the first array that does not fit this config."""
        expected = self.state_shapes()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise UserError(f"{source}: BRPG state lacks {missing}, expected a state saved by the same BRPG config")
        for name, shape in expected.items():
            _check_shape(source, name, np.asarray(state[name]).shape, shape, name == "queue_rows")
        self.clustered = bool(int(np.asarray(state["clustered"])))
        self.sampler.confidence_ema.set_data(Tensor(np.asarray(state["confidence_ema"], np.float32)))
        self.bank.protos.set_data(Tensor(np.asarray(state["protos"], np.float32)))
        self.bank.valid.set_data(Tensor(np.asarray(state["proto_valid"], np.float32)))
        self.queues = self.enqueue_step = None
        rows = np.asarray(state["queue_rows"], np.float32)
        if rows.shape[2]:
            self._allocate_queues()
            self.queues.load_state_arrays(rows, np.asarray(state["queue_ptr"]), np.asarray(state["queue_fill"]))


def _check_shape(source, name, shape, expected, may_be_empty):
    if tuple(shape) == expected or (may_be_empty and tuple(shape) == expected[:2] + (0,) + expected[3:]):
        return
    raise UserError(f"{source}: BRPG {name} has shape {list(shape)}, this config builds {list(expected)}, "
                    "expected the net.num_classes and trainer.prototype settings the run started with")
