"""BRPG confidence-based prototype generation (CPG, brpg.md section 2): per-class high/low feature queues.

Runs once per iteration of the sampling window as one compiled graph (`EnqueueStep`): fixed shapes throughout.
Candidate pixels are chosen with host-drawn uniform noise (a resumed run replays the same choice): a random subset
of at most `budget` eligible pixels is the `budget` smallest keys `-log(u) * n_c**gamma` (Efraimidis-Spirakis
weighted sampling without replacement; gamma = 0 is a uniform shuffle-and-truncate, gamma > 0 the class-balanced
roulette wheel). The chosen rows go into ring buffers with a scatter: no loop over pixels or classes.

Queue q = set * C + class (set 0 = high, 1 = low) owns rows [q * L, (q + 1) * L) of one flat bank; the extra last
row absorbs the writes of rows that are not kept, so every scatter has the same shape.
"""
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
import mindspore as ms

from ...losses.ohem import IGNORE_INDEX
from .settings import CSP

HIGH, LOW = 0, 1
_NOT_ELIGIBLE = 1e30  # key of pixels that must not be chosen (real keys stay below ~1e8)


# ------------------------------------------------------------------------------------------------- ring buffer


def ring_write_index(queue, valid, write_ptr, num_queues, length):
    """(bank row per input row (K,), arrivals per queue (Q,)) for appending the valid rows in order.

    Row i of queue q goes to q * length + (write_ptr[q] + rank) % length, rank = earlier valid rows of q; rows that
    are invalid or not among the last `length` arrivals of their queue go to the trash row Q * length, so no two
    kept rows share a target (a scatter with duplicate targets has no defined winner on GPU)."""
    member = ops.one_hot(queue, num_queues, Tensor(1, ms.int32), Tensor(0, ms.int32)) * valid.reshape(-1, 1)
    earlier = ops.cumsum(member, 0) - member
    rank = ops.gather_elements(earlier, 1, queue.reshape(-1, 1)).reshape(-1)
    arrivals = member.sum(axis=0).astype(ms.int32)
    keep = ops.logical_and(valid > 0, rank >= ops.gather(arrivals, queue, 0) - length)
    position = (ops.gather(write_ptr, queue, 0) + rank) % length
    index = ops.where(keep, queue * length + position, ops.full_like(queue, num_queues * length))
    return index, arrivals


class FeatureQueues(nn.Cell):
    """2*C FIFO queues of `queue_len` rows [feature (D), confidence]; keeps the newest rows of each queue.

    construct(feats (K, D), conf (K,), label (K,) int32, set_id (K,) int32, valid (K,) int32) -> arrivals (2C,):
    the valid rows are appended in row order to queue set_id * C + label; when more than queue_len rows of one
    queue arrive at once, only the last queue_len are written (the others would be overwritten anyway)."""

    def __init__(self, num_classes, feat_dim, queue_len):
        super().__init__()
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.queue_len = queue_len
        self.num_queues = 2 * num_classes
        self.bank = Parameter(Tensor(np.zeros((self.num_queues * queue_len + 1, feat_dim + 1), np.float32)),
                              name="brpg_queue_bank", requires_grad=False)
        self.write_ptr = Parameter(Tensor(np.zeros(self.num_queues, np.int32)), name="brpg_queue_ptr",
                                   requires_grad=False)
        self.fill = Parameter(Tensor(np.zeros(self.num_queues, np.int32)), name="brpg_queue_fill",
                              requires_grad=False)

    def construct(self, feats, conf, label, set_id, valid):
        queue = set_id * self.num_classes + label
        index, arrivals = ring_write_index(queue, valid, self.write_ptr, self.num_queues, self.queue_len)
        rows = ops.concat((feats, conf.reshape(-1, 1)), axis=1)
        written = ops.scatter_update(self.bank, index, rows)
        arrivals = ops.depend(arrivals, written)
        ops.assign(self.write_ptr, (self.write_ptr + arrivals) % self.queue_len)
        ops.assign(self.fill, ops.minimum(self.fill + arrivals, self.queue_len))
        return arrivals

    # ------------------------------------------------------------------------------------------ host side

    def queue_id(self, set_id, label):
        return set_id * self.num_classes + label

    def contents(self, set_id, label):
        """(features (n, D), confidences (n,)) of one queue, oldest first, as numpy (the order k-means sees)."""
        q = self.queue_id(set_id, label)
        fill = int(self.fill.asnumpy()[q])
        ptr = int(self.write_ptr.asnumpy()[q])
        rows = self.bank.asnumpy()[q * self.queue_len:(q + 1) * self.queue_len]
        rows = rows[:fill] if fill < self.queue_len else np.concatenate((rows[ptr:], rows[:ptr]))
        return rows[:, :-1], rows[:, -1]

    def state_arrays(self):
        shape = (2, self.num_classes, self.queue_len, self.feat_dim + 1)
        return {"queue_rows": self.bank.asnumpy()[:-1].reshape(shape),
                "queue_ptr": self.write_ptr.asnumpy().reshape(2, self.num_classes),
                "queue_fill": self.fill.asnumpy().reshape(2, self.num_classes)}

    def load_state_arrays(self, rows, ptr, fill):
        bank = np.concatenate((rows.reshape(-1, self.feat_dim + 1), np.zeros((1, self.feat_dim + 1), np.float32)))
        self.bank.set_data(Tensor(bank.astype(np.float32)))
        self.write_ptr.set_data(Tensor(ptr.reshape(-1).astype(np.int32)))
        self.fill.set_data(Tensor(fill.reshape(-1).astype(np.int32)))


# ----------------------------------------------------------------------------------------- candidate selection


def nearest_downsample(label, size):
    """torch F.interpolate(mode='nearest') of (B, H, W) int labels to `size`: source index floor(i * H / h) in
    float32 arithmetic, as ATen computes it."""
    height, width = label.shape[1], label.shape[2]

    def source(out_size, in_size):
        scale = Tensor(np.float32(in_size) / np.float32(out_size), ms.float32)
        index = ops.floor(ops.arange(0, out_size, dtype=ms.float32) * scale).astype(ms.int32)
        return ops.minimum(index, in_size - 1)

    rows = ops.gather(label, source(size[0], height), 1)
    return ops.gather(rows, source(size[1], width), 2)


def pixel_rows(feature_map):
    """(B, D, h, w) -> (B*h*w, D), rows in (image, row, column) order."""
    batch, dim, height, width = feature_map.shape
    return feature_map.transpose(0, 2, 3, 1).reshape(batch * height * width, dim)


def sampling_keys(eligible, label, noise, gamma, num_classes):
    """Keys whose `k` smallest are a weighted sample without replacement with weight n_c**-gamma per pixel (n_c:
    eligible pixels of its class). noise: uniform (0, 1] per pixel; ineligible pixels get an unreachable key."""
    exponential = -ops.log(noise)
    if gamma != 0:
        counts = ops.unsorted_segment_sum(eligible.astype(ms.float32), label, num_classes)
        exponential = exponential * ops.pow(ops.maximum(ops.gather(counts, label, 0), 1.0), gamma)
    return ops.where(eligible, exponential, ops.full_like(exponential, _NOT_ELIGIBLE))


def choose(keys, budget):
    """(indices (k,), chosen (k,) bool) of the min(budget, N) smallest keys, smallest first; `chosen` is False for
    filler entries when fewer than `budget` pixels are eligible."""
    count = min(budget, keys.shape[0])
    values, index = ops.topk(-keys, count)
    return index.astype(ms.int32), values > -_NOT_ELIGIBLE


class CPGSampler(nn.Cell):
    """One iteration's CPG rows (brpg.md section 2), fixed shapes.

    construct(rep_l, logits_l, label_l, rep_u, logits_u, noise_l, noise_u) -> (feats, conf, label, set_id, valid)
      rep_l (B_l, D, h, w), logits_l (B_l, C, h, w): the student's train-mode forward on the labeled images;
      label_l (B_l, H, W) full-resolution GT (nearest-downsampled here); rep_u / logits_u: the teacher in eval mode
      on the weak unlabeled view; noise_l (B_l*h*w,), noise_u (B_u*h*w,): uniform (0, 1] from the host.
    Labeled pixels predicted correctly go to the high set when conf >= tau_c, else to the low set (fix: also
    conf > low_threshold); unlabeled pixels with teacher conf >= pseudo_threshold go to the high set only.
    `csp` updates the per-class confidence EMA (full-resolution student probabilities of the GT class) first;
    `reduce` (AllReduce or None) synchronises its statistics across devices."""

    def __init__(self, settings, num_classes, reduce=None):
        super().__init__()
        self.settings = settings
        self.num_classes = num_classes
        self.reduce = reduce
        self.csp = settings.threshold_type == CSP
        self.confidence_ema = Parameter(Tensor(np.full(num_classes, settings.init_prob, np.float32)),
                                        name="brpg_confidence_ema", requires_grad=False)
        fixed = np.zeros(num_classes, np.float32)
        fixed[list(settings.fix_class)] = 1.0
        self.fixed_class = Tensor(fixed)
        self.argmax = ops.ArgMaxWithValue(axis=1)

    def construct(self, rep_l, logits_l, label_l, rep_u, logits_u, noise_l, noise_u):
        thresholds, low_bound = self.class_thresholds(logits_l, label_l)
        pred_l, conf_l = self.argmax(ops.softmax(logits_l, axis=1))
        pred_l, conf_l = pred_l.astype(ms.int32).reshape(-1), conf_l.reshape(-1)
        gt_small = nearest_downsample(label_l, logits_l.shape[2:]).reshape(-1)
        correct = gt_small == pred_l  # 255 never equals a prediction
        tau = ops.gather(thresholds, pred_l, 0)
        high_l = ops.logical_and(correct, conf_l >= tau)
        low_l = ops.logical_and(ops.logical_and(correct, conf_l < tau), conf_l > low_bound)
        pred_u, conf_u = self.argmax(ops.softmax(logits_u, axis=1))
        pred_u, conf_u = pred_u.astype(ms.int32).reshape(-1), conf_u.reshape(-1)
        high_u = conf_u >= self.settings.pseudo_threshold
        feats = ops.concat((pixel_rows(rep_l), pixel_rows(rep_u)), axis=0)
        conf = ops.concat((conf_l, conf_u))
        label = ops.concat((pred_l, pred_u))
        images_l, images_u = logits_l.shape[0], logits_u.shape[0]
        if self.settings.class_balance_sample:
            index, valid, set_id = self.balanced_choice(high_l, low_l, high_u, pred_l, pred_u, noise_l, noise_u,
                                                        images_l)
        else:
            index, valid, set_id = self.uniform_choice(high_l, low_l, high_u, label, noise_l, noise_u, images_l,
                                                       images_u)
        return (ops.gather(feats, index, 0), ops.gather(conf, index, 0), ops.gather(label, index, 0), set_id,
                valid.astype(ms.int32))

    def uniform_choice(self, high_l, low_l, high_u, label, noise_l, noise_u, images_l, images_u):
        """Upstream default: shuffle(high_l + high_u)[:spn * (B_l + B_u)], random subset of low_l of spn * B_l."""
        per_image = self.settings.sample_pixel_num
        high = ops.concat((high_l, high_u))
        high_keys = sampling_keys(high, label, ops.concat((noise_l, noise_u)), 0, self.num_classes)
        high_index, high_valid = choose(high_keys, per_image * (images_l + images_u))
        low_keys = sampling_keys(low_l, label[:low_l.shape[0]], noise_l, 0, self.num_classes)
        low_index, low_valid = choose(low_keys, per_image * images_l)
        return self._join(high_index, high_valid, low_index, low_valid)

    def balanced_choice(self, high_l, low_l, high_u, pred_l, pred_u, noise_l, noise_u, images_l):
        """class_balance_sample: high_l, low_l and high_u each weighted by n_c**-gamma, budget spn * B_l each
        (upstream uses the labeled batch size for the unlabeled budget too)."""
        budget = self.settings.sample_pixel_num * images_l
        gamma = self.settings.gamma
        index_hl, valid_hl = choose(sampling_keys(high_l, pred_l, noise_l, gamma, self.num_classes), budget)
        index_hu, valid_hu = choose(sampling_keys(high_u, pred_u, noise_u, gamma, self.num_classes), budget)
        index_ll, valid_ll = choose(sampling_keys(low_l, pred_l, noise_l, gamma, self.num_classes), budget)
        high_index = ops.concat((index_hl, index_hu + high_l.shape[0]))
        return self._join(high_index, ops.concat((valid_hl, valid_hu)), index_ll, valid_ll)

    @staticmethod
    def _join(high_index, high_valid, low_index, low_valid):
        set_id = ops.concat((ops.full(high_index.shape, HIGH, dtype=ms.int32),
                             ops.full(low_index.shape, LOW, dtype=ms.int32)))
        return ops.concat((high_index, low_index)), ops.concat((high_valid, low_valid)), set_id

    def class_thresholds(self, logits_l, label_l):
        """(tau (C,), lower confidence bound of the low set). fix: tau = high_threshold, bound = low_threshold;
        csp: tau_c = clip(EMA_c, thre_min, thre_max) (high_threshold for fix_class), no lower bound."""
        settings = self.settings
        if not self.csp:
            return ops.full((self.num_classes,), settings.high_threshold, dtype=ms.float32), settings.low_threshold
        ema = self.update_confidence_ema(logits_l, label_l)
        tau = ops.clip_by_value(ema, settings.thre_min, settings.thre_max)
        return ops.where(self.fixed_class > 0.5, ops.full_like(tau, settings.high_threshold), tau), -1.0

    def update_confidence_ema(self, logits_l, label_l):
        """EMA_c <- u * EMA_c + (1 - u) * mean student prob of class c over the full-res GT pixels of class c."""
        size = label_l.shape[1:]
        probs = ops.softmax(ops.interpolate(logits_l, size=size, mode="bilinear", align_corners=True), axis=1)
        flat = label_l.reshape(-1)
        valid = flat != IGNORE_INDEX
        segment = ops.where(valid, flat, ops.full_like(flat, self.num_classes)).astype(ms.int32)
        safe = ops.where(valid, flat, ops.zeros_like(flat)).astype(ms.int32)
        prob_gt = ops.gather_elements(probs.transpose(0, 2, 3, 1).reshape(-1, self.num_classes), 1,
                                      safe.reshape(-1, 1)).reshape(-1)
        sums = ops.unsorted_segment_sum(prob_gt, segment, self.num_classes + 1)[:self.num_classes]
        counts = ops.unsorted_segment_sum(valid.astype(ms.float32), segment, self.num_classes + 1)[:self.num_classes]
        if self.reduce is not None:
            sums, counts = self.reduce(sums), self.reduce(counts)
        momentum = self.settings.thre_update
        moved = momentum * self.confidence_ema + (1.0 - momentum) * sums / ops.maximum(counts, 1.0)
        new_ema = ops.where(counts > 0, moved, self.confidence_ema)
        ops.assign(self.confidence_ema, new_ema)
        return new_ema
