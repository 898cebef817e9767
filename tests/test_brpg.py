"""BRPG (issue 5): queues, CPG sampling, APO, clustering, L_pro and the prototype EMA against references.

Numeric comparisons (marked `numeric`) hold on any CPU: values to the float32 floor of the torch reference (run in
float64 too) or a stated tolerance, and a discrete choice (sampling order, the matched prototype, the predicted
class, a confidence threshold) only where the test data keep it far from a tie."""
import copy
import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans

import mindspore as ms
from mindspore import Tensor

from helpers import FLOAT32_EPS, assert_float32_close, assert_well_posed, top2_margin
from ms_semiseg.config import load_config
from ms_semiseg.errors import UserError
from ms_semiseg.losses.brpg import grid_coords, grid_positions, pseudo_threshold_at, targets_with_prototypes
from ms_semiseg.methods.brpg.cluster import (KMEANS_0_20_DEFAULTS, apo_class_count, apo_selection, dispersion,
                                             prototype_numbers)
from ms_semiseg.methods.brpg.queue import (HIGH, LOW, FeatureQueues, choose, nearest_downsample, ring_write_index,
                                           sampling_keys)
from ms_semiseg.methods.brpg.settings import BRPGSettings, brpg_enabled
from ms_semiseg.methods.brpg.state import BRPGState, PrototypeBank, uniform_noise

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C, D, B, h, H = 3, 8, 2, 5, 17  # classes, feature dim, batch, feature size (stride 4 of H), image size
# Discrete choices compared between MindSpore and a reference (cosine similarities, probabilities: O(1), which the two
# compute ~1e-7 apart) must be further than this from a tie on the test data: ~80 float32 ulps at 1.
DECISION_TOL = 1e-5


def tiny_cfg(**prototype):
    section = {"sample_pixel_num": 20, "queue_len": 16, "grid_num": 4, "unsup_sample_num": 10,
               "pseudo_ramp_start_epoch": None}
    section.update(prototype)
    return {"trainer": {"epochs": 6, "sup_only_epoch": 1, "prototype": section},
            "dataset": {"train": {"crop": {"size": [H, H]}}}, "net": {"num_classes": C}}


def brpg_state(cfg, **kwargs):
    """BRPGState of a `tiny_cfg` (the trainer builds it from the validated settings and the plan's crop, epochs)."""
    return BRPGState(BRPGSettings.from_config(cfg, C), C, (H, H), cfg["trainer"]["epochs"], D, **kwargs)


def random_step(rng, batch=B):
    """Tensors of one sampling step: student labeled outputs, GT, teacher unlabeled outputs."""
    def normal(*shape, scale=1.0):
        return Tensor((scale * rng.standard_normal(shape)).astype(np.float32))
    label = rng.integers(0, C, (batch, H, H)).astype(np.int32)
    label[:, 0, :3] = 255
    return (normal(batch, D, h, h), normal(batch, C, h, h, scale=3.0), label, normal(batch, D, h, h),
            normal(batch, C, h, h, scale=3.0))


def filled_state(seed=0, steps=3, **prototype):
    state = brpg_state(tiny_cfg(**prototype), log=lambda message: None)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        state.enqueue(*random_step(rng), rng)
    return state


# ----------------------------------------------------------------------------------------------- queues


def enqueue_rows(queues, ids, labels, sets, valid=None):
    """Rows whose feature is (id, ..., id) and confidence id / 100."""
    ids = np.asarray(ids, np.float32)
    valid = np.ones(len(ids), np.int32) if valid is None else np.asarray(valid, np.int32)
    feats = np.repeat(ids[:, None], queues.feat_dim, axis=1)
    return queues(Tensor(feats), Tensor(ids / 100), Tensor(np.asarray(labels, np.int32)),
                  Tensor(np.asarray(sets, np.int32)), Tensor(valid))


def queue_ids(queues, set_id, label):
    feats, conf = queues.contents(set_id, label)
    np.testing.assert_allclose(conf, feats[:, 0] / 100, rtol=1e-6)
    return feats[:, 0].astype(int).tolist()


def test_queue_fifo_keeps_newest_rows_in_order():
    queues = FeatureQueues(num_classes=2, feat_dim=3, queue_len=4)
    arrivals = enqueue_rows(queues, [1, 2, 99, 3, 4], [0, 0, 0, 0, 1], [HIGH, HIGH, HIGH, HIGH, LOW],
                            valid=[1, 1, 0, 1, 1])
    np.testing.assert_array_equal(arrivals.asnumpy(), [3, 0, 0, 1])  # queues (high 0, high 1, low 0, low 1)
    assert queue_ids(queues, HIGH, 0) == [1, 2, 3] and queue_ids(queues, LOW, 1) == [4]
    assert queue_ids(queues, HIGH, 1) == [] and queue_ids(queues, LOW, 0) == []
    enqueue_rows(queues, [5, 6, 7], [0, 0, 0], [HIGH] * 3)
    assert queue_ids(queues, HIGH, 0) == [3, 5, 6, 7]  # 1 and 2 overwritten first
    enqueue_rows(queues, list(range(8, 14)), [0] * 6, [HIGH] * 6)  # more than queue_len at once
    assert queue_ids(queues, HIGH, 0) == [10, 11, 12, 13]
    np.testing.assert_array_equal(queues.fill.asnumpy(), [4, 0, 0, 1])
    np.testing.assert_array_equal(queues.write_ptr.asnumpy(), [(3 + 3 + 6) % 4, 0, 0, 1])
    assert queue_ids(queues, LOW, 1) == [4]  # other queues untouched


def test_ring_write_targets_are_distinct_and_overflow_goes_to_trash():
    # queue 0 receives 6 rows with queue_len 4 and write pointer 1; queue 1 one invalid and one valid row
    queue = Tensor(np.array([0, 0, 1, 0, 0, 1, 0, 0], np.int32))
    valid = Tensor(np.array([1, 1, 0, 1, 1, 1, 1, 1], np.int32))
    index, arrivals = ring_write_index(queue, valid, Tensor(np.array([1, 3], np.int32)), num_queues=2, length=4)
    trash = 8
    # the 2 oldest of queue 0's rows are dropped; the kept ones go to slots 3, 0, 1, 2 (after the 2 dropped)
    np.testing.assert_array_equal(index.asnumpy(), [trash, trash, trash, 3, 0, 4 + 3, 1, 2])
    np.testing.assert_array_equal(arrivals.asnumpy(), [6, 1])


def test_queue_interleaved_classes_keep_their_own_order():
    queues = FeatureQueues(num_classes=2, feat_dim=1, queue_len=3)
    enqueue_rows(queues, [1, 2, 3, 4, 5, 6, 7], [0, 1, 0, 1, 0, 0, 1], [LOW] * 7)
    assert queue_ids(queues, LOW, 0) == [3, 5, 6] and queue_ids(queues, LOW, 1) == [2, 4, 7]


# ---------------------------------------------------------------------------------------------- sampling


def test_nearest_downsample_matches_torch():
    rng = np.random.default_rng(1)
    for size, small in ((513, 129), (769, 193), (17, 5), (33, 9)):
        label = rng.integers(0, 21, (1, size, size + 2)).astype(np.int32)
        ours = nearest_downsample(Tensor(label), (small, small + 1)).asnumpy()
        ref = F.interpolate(torch.from_numpy(label).float()[:, None], size=(small, small + 1), mode="nearest")
        np.testing.assert_array_equal(ours, ref[:, 0].numpy().astype(np.int32))


@pytest.mark.numeric
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_sampling_keys_choose_the_weighted_order_statistics(gamma):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, C, 200).astype(np.int32)
    eligible = rng.random(200) < 0.6
    noise = uniform_noise(rng, 200)
    keys = sampling_keys(Tensor(eligible), Tensor(labels), Tensor(noise), gamma, C)
    index, chosen = choose(keys, 50)
    counts = np.bincount(labels[eligible], minlength=C).astype(np.float64)
    reference = -np.log(noise.astype(np.float64)) * counts[labels] ** gamma
    expected = np.flatnonzero(eligible)[np.argsort(reference[eligible], kind="stable")[:50]]
    # MindSpore's float32 keys give the same order when the 51 smallest are apart by more than a few ulps each
    first = np.sort(reference[eligible])[:51]
    assert_well_posed(np.diff(first) / first[1:], 16 * FLOAT32_EPS, "relative gap of consecutive sampling keys")
    np.testing.assert_array_equal(index.asnumpy(), expected)
    assert chosen.asnumpy().all()
    index, chosen = choose(keys, 190)  # more budget than eligible pixels: all of them, then fillers
    assert sorted(index.asnumpy()[chosen.asnumpy()].tolist()) == np.flatnonzero(eligible).tolist()
    assert chosen.asnumpy().sum() == eligible.sum()


def one_hot_logits(pred, conf):
    """(B, C, h, w) logits whose softmax has max `conf` at class `pred` (conf > 1/C)."""
    rest = (1.0 - conf) / (C - 1)
    probs = np.where(np.arange(C)[None, :, None, None] == pred[:, None], conf[:, None], rest[:, None])
    return Tensor(np.log(probs).astype(np.float32))


@pytest.mark.numeric
def test_cpg_fixed_thresholds_route_pixels_as_upstream():
    """Confidences 0.5/0.79/0.81/0.95 against thresholds 0.8: 0.01 from a tie, rounding cannot reroute a pixel."""
    state = brpg_state(tiny_cfg(sample_pixel_num=1000))
    rng = np.random.default_rng(3)
    shape = (1, h, h)
    pred_l, conf_l = rng.integers(0, C, shape), rng.choice([0.5, 0.79, 0.81, 0.95], shape)
    gt = pred_l.copy()
    gt[0, 0] = (gt[0, 0] + 1) % C  # first row misclassified
    gt[0, 1, 0] = 255
    label_full = rng.integers(0, C, (1, H, H)).astype(np.int32)
    rows = np.floor(np.arange(h) * np.float32(H / h)).astype(int)  # torch's nearest (checked above)
    label_full[0][np.ix_(rows, rows)] = gt[0]
    pred_u, conf_u = rng.integers(0, C, shape), rng.choice([0.6, 0.79, 0.81, 0.9], shape)
    rep_l = rng.standard_normal((1, D, h, h)).astype(np.float32)
    rep_u = rng.standard_normal((1, D, h, h)).astype(np.float32)
    feats, conf, label, set_id, valid = state.sampler(
        Tensor(rep_l), one_hot_logits(pred_l, conf_l), Tensor(label_full), Tensor(rep_u),
        one_hot_logits(pred_u, conf_u), Tensor(uniform_noise(rng, h * h)), Tensor(uniform_noise(rng, h * h)))
    keep = valid.asnumpy() > 0
    got = sorted(zip(set_id.asnumpy()[keep].tolist(), label.asnumpy()[keep].tolist(),
                     np.round(conf.asnumpy()[keep].astype(float), 4).tolist(),
                     np.round(feats.asnumpy()[keep, 0].astype(float), 5).tolist()))
    expected = []
    for y, x in np.ndindex(h, h):
        if gt[0, y, x] == pred_l[0, y, x]:  # misclassified labeled pixels are never sampled
            expected.append((HIGH if conf_l[0, y, x] >= 0.8 else LOW, pred_l[0, y, x], conf_l[0, y, x],
                             rep_l[0, 0, y, x]))
        if conf_u[0, y, x] >= 0.8:  # unlabeled: high set only
            expected.append((HIGH, pred_u[0, y, x], conf_u[0, y, x], rep_u[0, 0, y, x]))
    expected = sorted((s, int(c), round(float(p), 4), round(float(f), 5)) for s, c, p, f in expected)
    assert got == expected and len(got) < 2 * h * h


def test_cpg_budget_caps_high_and_low_rows():
    state = brpg_state(tiny_cfg(sample_pixel_num=3, high_threshold=0.0))
    rng = np.random.default_rng(4)
    rep_l, logits_l, label, rep_u, logits_u = random_step(rng)
    *_, set_id, valid = state.sampler(rep_l, logits_l, Tensor(label), rep_u, logits_u,
                                      Tensor(uniform_noise(rng, B * h * h)), Tensor(uniform_noise(rng, B * h * h)))
    set_id, valid = set_id.asnumpy(), valid.asnumpy() > 0
    assert (set_id == HIGH).sum() == 3 * (B + B) and valid[set_id == HIGH].sum() == 3 * (B + B)  # spn*(B_l+B_u)
    assert (set_id == LOW).sum() == 3 * B and valid[set_id == LOW].sum() == 0  # no labeled pixel below 0


@pytest.mark.numeric
def test_csp_confidence_ema_and_thresholds():
    state = brpg_state(tiny_cfg(threshold_type="csp", thre_min=0.7, thre_max=0.75, fix_class=[2],
                                thre_update=0.9, init_prob=0.8))
    rng = np.random.default_rng(5)
    rep_l, logits_l, label, *_ = random_step(rng)
    tau, bound = state.sampler.class_thresholds(logits_l, Tensor(label))
    probs = torch.softmax(F.interpolate(torch.from_numpy(logits_l.asnumpy()), size=(H, H), mode="bilinear",
                                        align_corners=True), dim=1).numpy()
    ema = np.full(C, 0.8)
    for c in range(C):
        if (label == c).any():
            ema[c] = 0.9 * 0.8 + 0.1 * probs.transpose(0, 2, 3, 1)[label == c][:, c].mean()
    np.testing.assert_allclose(state.sampler.confidence_ema.asnumpy(), ema, rtol=1e-5)
    np.testing.assert_allclose(tau.asnumpy(), [np.clip(ema[0], 0.7, 0.75), np.clip(ema[1], 0.7, 0.75), 0.8],
                               rtol=1e-5)
    assert bound < 0


# ---------------------------------------------------------------------------------------------------- APO


def test_dispersion_hand_values():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert dispersion(x, "cos_sim") == pytest.approx(np.sqrt(0.5))
    assert dispersion(x, "l2") == pytest.approx(np.sqrt(0.5))
    assert dispersion(x, "l2_norm") == pytest.approx(np.sqrt((1 - np.sqrt(0.5)) ** 2 + 0.5))
    assert np.isnan(dispersion(np.zeros((0, 2)), "cos_sim"))


def test_apo_class_count_uses_pythons_round():
    assert [apo_class_count(0.05, n) for n in (21, 19, 81, 5)] == [1, 1, 4, 1]


def apo_queues(rng):
    """Class 0 tight; class 1 angularly scattered; class 2 tight in direction, norms from 1 to 100."""
    direction = np.eye(D)[0]
    tight = direction + 0.01 * rng.standard_normal((50, D))
    scattered = np.abs(rng.standard_normal((50, D)))
    long = direction * np.linspace(1, 100, 50)[:, None] + 0.01 * rng.standard_normal((50, D))
    return [(f, np.ones(len(f))) for f in (tight, scattered, long)]


@pytest.mark.parametrize("metric, chosen", [("cos_sim", 1), ("l2", 2), ("l2_norm", 1)])
def test_apo_selects_the_most_scattered_class_per_set(metric, chosen):
    rng = np.random.default_rng(6)
    high = apo_queues(rng)
    low = [high[2], high[0], high[1]]  # the low set's scattered class differs: chosen independently
    settings = BRPGSettings(intra_var_eval=metric, add_num=2)
    numbers = prototype_numbers([high, low], settings, C)
    expected_high = [2 + 2 * (c == chosen) for c in range(C)]
    expected_low = [2 + 2 * (c == (chosen + 1) % C) for c in range(C)]
    assert numbers.tolist() == [expected_high, expected_low]


def test_apo_ties_and_empty_queues():
    assert apo_selection([0.5, 0.2, 0.2, np.nan], 1, "cos_sim").tolist() == [False, True, True, False]
    assert apo_selection([1.0, 3.0, np.nan], 2, "l2").tolist() == [True, True, False]
    assert not apo_selection([np.nan, np.nan], 1, "l2").any()


# ------------------------------------------------------------------------------------------------ clustering


def blob_state(**prototype):
    """A state whose queues hold, per class and set, two separated blobs (deterministic)."""
    state = brpg_state(tiny_cfg(**prototype), log=lambda message: None)
    rng = np.random.default_rng(7)
    rows = np.zeros((2, C, 16, D + 1), np.float32)
    for s, c in np.ndindex(2, C):
        centers = rng.standard_normal((2, D)) * 5
        rows[s, c, :, :D] = centers[np.arange(16) % 2] + 0.1 * rng.standard_normal((16, D))
        rows[s, c, :, D] = rng.uniform(0.5, 1.0, 16)
    full = np.full((2, C), 16, np.int32)
    state.load_state_dict(dict(state.state_dict(), queue_rows=rows, queue_ptr=np.zeros((2, C), np.int32),
                               queue_fill=full))
    return state, rows


def test_clustering_is_deterministic_and_uses_pinned_kmeans():
    """first == second bit for bit: the same k-means on the same rows twice in one process (same-machine
    determinism, which resuming relies on); against sklearn called directly, the same computation as well."""
    first, rows = blob_state(proto_add=False)
    second, _ = blob_state(proto_add=False)
    first.cluster(seed=0)
    second.cluster(seed=0)
    np.testing.assert_array_equal(first.bank.protos.asnumpy(), second.bank.protos.asnumpy())
    assert first.clustered and first.queues is None
    reference = MiniBatchKMeans(n_clusters=2, random_state=0, **KMEANS_0_20_DEFAULTS).fit(rows[LOW, 1, :, :D])
    np.testing.assert_allclose(first.bank.protos.asnumpy()[1, 2:4], reference.cluster_centers_, rtol=1e-6)
    assert KMEANS_0_20_DEFAULTS["batch_size"] == 100 and KMEANS_0_20_DEFAULTS["n_init"] == 3
    np.testing.assert_array_equal(first.bank.valid.asnumpy(), np.ones((C, 4)))


def test_prob_type_weights_members_by_confidence():
    state, rows = blob_state(proto_add=False, type="prob")
    state.cluster(seed=0)
    feats, conf = rows[HIGH, 0, :, :D], rows[HIGH, 0, :, D]
    labels = MiniBatchKMeans(n_clusters=2, random_state=0, **KMEANS_0_20_DEFAULTS).fit(feats).labels_
    expected = [(feats[labels == k] * conf[labels == k, None]).sum(0) / conf[labels == k].sum() for k in range(2)]
    np.testing.assert_allclose(state.bank.protos.asnumpy()[0, :2], expected, rtol=1e-5)


def test_apo_padding_repeats_the_last_prototype_and_masks_it():
    state, _ = blob_state()  # proto_add: 3 + 3 slots, one class per set gets 3
    state.cluster()
    protos, valid = state.bank.protos.asnumpy(), state.bank.valid.asnumpy()
    assert valid.shape == (C, 6) and valid.sum() == C * 4 + 2
    for c in range(C):
        for start in (0, 3):
            n = int(valid[c, start:start + 3].sum())
            np.testing.assert_array_equal(protos[c, start + n:start + 3], np.repeat(protos[c, start + n - 1:start + n],
                                                                                     3 - n, axis=0))


def test_too_few_samples_fallback_is_logged_and_error_mode_raises():
    messages = []
    state = brpg_state(tiny_cfg(proto_add=False), log=messages.append)
    rows = np.zeros((2, C, 16, D + 1), np.float32)
    rows[..., :D] = np.random.default_rng(8).standard_normal((2, C, 16, D))
    fill = np.array([[16, 1, 0], [16, 16, 0]], np.int32)  # class 1: one high row; class 2: nothing at all
    saved = dict(state.state_dict(), queue_rows=rows, queue_ptr=fill % 16, queue_fill=fill)
    state.load_state_dict(saved)
    state.cluster()
    valid = state.bank.valid.asnumpy()
    np.testing.assert_array_equal(valid[1], [1, 0, 1, 1])
    np.testing.assert_array_equal(state.bank.protos.asnumpy()[1, 0], rows[HIGH, 1, 0, :D])
    assert not valid[2].any()
    assert any("class 1 high queue holds 1 feature(s) < 2" in m for m in messages)
    assert any("class 2 has no prototype" in m for m in messages)
    target = Tensor(np.array([0, 1, 2, 255], np.int32))
    np.testing.assert_array_equal(targets_with_prototypes(target, state.bank.valid).asnumpy(), [0, 1, 255, 255])
    strict = brpg_state(tiny_cfg(proto_add=False, too_few_samples="error"))
    strict.load_state_dict(saved)
    with pytest.raises(UserError, match="class 1 high queue holds 1 feature"):
        strict.cluster()


# ------------------------------------------------------------------------------------------------- the loss


def torch_reference_loss(rep_l, label_l, rep_u, pseudo_u, conf_u, noise_u, thr, padded, settings):
    """brpg.md section 5 in PyTorch: upsample + grid mask, confident unlabeled subset, padded max, two CEs."""
    size = label_l.shape[1:]
    grid_num, tau = settings.grid_num, settings.cosine_tao
    rep_l_large = F.interpolate(rep_l, size, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)
    ids = [i * ((size[0] - 1) // grid_num) for i in range(grid_num)] + [size[0] - 1]
    mask = torch.zeros(size, dtype=torch.bool)
    mask[np.ix_(ids, ids)] = True
    f_l, y_l = rep_l_large[:, mask].reshape(-1, rep_l.shape[1]), label_l[:, mask].reshape(-1)
    confident = conf_u >= thr
    rep_u_large = F.interpolate(rep_u, size, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)
    f_u, y_u, order = rep_u_large[confident], pseudo_u[confident], torch.argsort(noise_u[confident])
    keep = order[:settings.unsup_sample_num * rep_u.shape[0]]  # the subset with the smallest noise
    f_u, y_u = f_u[keep], y_u[keep]
    protos = padded.reshape(-1, padded.shape[-1])

    def scores(f):
        cos = F.cosine_similarity(f.unsqueeze(1), protos.unsqueeze(0), dim=2)
        return cos.view(-1, padded.shape[0], padded.shape[1]).max(dim=2)

    s_l, a_l = scores(f_l)
    s_u, a_u = scores(f_u)
    loss = F.cross_entropy(s_l / tau, y_l.long(), ignore_index=255) + F.cross_entropy(s_u / tau, y_u.long())
    return loss, (torch.cat((f_l, f_u)), torch.cat((y_l, y_u)), torch.cat((s_l, s_u)), torch.cat((a_l, a_u)))


def clustered_state(rng, **prototype):
    """A state with random prototypes: class c has 1 + c % 2 high and 2 low real ones, padded upstream-style."""
    state = brpg_state(tiny_cfg(proto_add=True, add_num=1, **prototype), log=lambda message: None)
    slots = state.settings.slots
    protos = rng.standard_normal((C, slots, D)).astype(np.float32)
    valid = np.zeros((C, slots), np.float32)
    for c in range(C):
        n_high = 1 + c % 2
        valid[c, :n_high] = valid[c, 3:5] = 1
        protos[c, n_high:3] = protos[c, n_high - 1]
        protos[c, 5] = protos[c, 4]
    state.bank.protos.set_data(Tensor(protos))
    state.bank.valid.set_data(Tensor(valid))
    state.clustered = True
    return state, protos, valid


def loss_inputs(rng, conf_scale=1.0):
    rep_l = rng.standard_normal((B, D, h, h)).astype(np.float32)
    rep_u = rng.standard_normal((B, D, h, h)).astype(np.float32)
    label = rng.integers(0, C, (B, H, H)).astype(np.int32)
    label[0, :4] = 255
    pseudo = rng.integers(0, C, (B, H, H)).astype(np.int32)
    conf = (conf_scale * rng.random((B, H, H))).astype(np.float32)
    noise = rng.random((B, H, H)).astype(np.float32)
    return rep_l, label, rep_u, pseudo, conf, noise


def prototype_margins(feats, protos, valid, target=None):
    """Per feature and class (or only the feature's `target` class): the cosine of its best real prototype minus
    that of the second best (padded slots repeat a real one, so they are left out). float64."""
    f = feats.astype(np.float64) / np.linalg.norm(feats.astype(np.float64), axis=1, keepdims=True)
    margins = []
    for c in range(protos.shape[0]) if target is None else sorted(set(target[target != 255].tolist())):
        real = protos[c, valid[c] > 0].astype(np.float64)
        if len(real) < 2:
            continue
        cos = f @ (real / np.linalg.norm(real, axis=1, keepdims=True)).T
        rows = slice(None) if target is None else target == c
        margins.append(top2_margin(cos[rows], axis=1))
    return np.concatenate(margins)


@pytest.mark.numeric
@pytest.mark.parametrize("conf_scale", [1.0, 0.8])  # many confident pixels (subset), few (all taken, fillers)
def test_loss_and_gradients_match_torch(conf_scale):
    rng = np.random.default_rng(9)
    state, protos, valid = clustered_state(rng)
    rep_l, label, rep_u, pseudo, conf, noise = loss_inputs(rng, conf_scale)
    threshold = 0.79
    assert ((conf >= threshold).sum() > 20) == (conf_scale == 1.0)

    def ours(rep_l, rep_u):
        return state.loss_cell(rep_l, Tensor(label), state.grid, rep_u, Tensor(pseudo), Tensor(conf), Tensor(noise),
                               Tensor(threshold, ms.float32))[0]

    loss, grads = ms.value_and_grad(ours, (0, 1))(Tensor(rep_l), Tensor(rep_u))
    refs = []
    for dtype in (np.float32, np.float64):  # the reference in float32, and in float64 for its float32 floor
        t_rep_l = torch.tensor(rep_l.astype(dtype), requires_grad=True)
        t_rep_u = torch.tensor(rep_u.astype(dtype), requires_grad=True)
        ref, (feats, target, _, _) = torch_reference_loss(
            t_rep_l, torch.from_numpy(label), t_rep_u, torch.from_numpy(pseudo), torch.from_numpy(conf),
            torch.from_numpy(noise), threshold, torch.from_numpy(protos.astype(dtype)), state.settings)
        ref.backward()
        refs.append((float(ref.detach()), t_rep_l.grad.numpy(), t_rep_u.grad.numpy()))
    # the gradient flows through each class's best prototype: well defined where it beats the others clearly
    assert_well_posed(prototype_margins(feats.detach().numpy(), protos, valid), DECISION_TOL, "best prototype")
    assert_float32_close(float(loss.asnumpy()), refs[0][0], refs[1][0], "loss", ulps=32)
    # MindSpore's CE gradient is exp(log_softmax) - onehot (see tests/test_losses.py): 64 ulps of the largest
    assert_float32_close(grads[0].asnumpy(), refs[0][1], refs[1][1], "labeled gradient", ulps=64)
    assert_float32_close(grads[1].asnumpy(), refs[0][2], refs[1][2], "unlabeled gradient", ulps=64)


def test_loss_weight_is_nominal_unless_asked_to_divide():
    assert BRPGSettings(loss_weight=0.5).loss_scale(world_size=4) == 0.5
    assert BRPGSettings(loss_weight=0.5, divide_loss_by_world_size=True).loss_scale(world_size=4) == 0.125


def reference_ema(padded, n_high, n_low, feats, labels, slot_index, pred_ok, settings):
    """brpg.md section 5's loop: padded slot -> real prototype, weighted mean per real prototype, EMA."""
    max_high, alpha = settings.max_high, settings.prototype_ema_decay
    weight_fault = settings.effective_fault_weight
    updated = padded.copy()
    for c in np.unique(labels[labels != 255]):
        index = slot_index[labels == c, c].copy()
        feature, weights = feats[labels == c], np.where(pred_ok[labels == c], 1.0, weight_fault)
        high_pad = (index < max_high) & (index >= n_high[c])
        low_pad = (index >= max_high) & (index >= max_high + n_low[c])
        index[high_pad], index[low_pad] = n_high[c] - 1, max_high + n_low[c] - 1
        for slot in np.unique(index):
            members = index == slot
            if weights[members].sum() == 0:
                continue
            mean = (feature[members] * weights[members, None]).sum(0) / weights[members].sum()
            updated[c, slot] = alpha * padded[c, slot] + (1 - alpha) * mean
    return updated


@pytest.mark.numeric
@pytest.mark.parametrize("fault_weight, boolean", [(1.0, True), (0.0, True), (0.5, True), (0.5, False)])
def test_prototype_ema_matches_reference(fault_weight, boolean):
    rng = np.random.default_rng(10)
    state, protos, valid = clustered_state(rng, fault_weight=fault_weight, fault_weight_boolean=boolean)
    rep_l, label, rep_u, pseudo, conf, noise = loss_inputs(rng)
    _, feats, target, scores, match = state.loss(Tensor(rep_l), Tensor(label), Tensor(rep_u), Tensor(pseudo),
                                                 Tensor(conf), Tensor(noise), Tensor(0.5, ms.float32))
    _, (t_feats, t_target, t_scores, t_match) = torch_reference_loss(
        torch.from_numpy(rep_l), torch.from_numpy(label), torch.from_numpy(rep_u), torch.from_numpy(pseudo),
        torch.from_numpy(conf), torch.from_numpy(noise), 0.5, torch.from_numpy(protos), state.settings)
    state.ema_update(feats, target, scores, match)
    n_high = valid[:, :3].sum(1).astype(int)
    n_low = valid[:, 3:].sum(1).astype(int)
    pred_ok = t_scores.argmax(1).numpy() == t_target.numpy()
    assert not pred_ok.all()
    # the reference's matched slot and predicted class are those of MindSpore only away from ties
    real = t_target.numpy() != 255
    assert_well_posed(prototype_margins(t_feats.numpy(), protos, valid, t_target.numpy()), DECISION_TOL,
                      "matched prototype")
    assert_well_posed(top2_margin(t_scores.numpy()[real], axis=1), DECISION_TOL, "predicted class (best score)")
    expected = reference_ema(protos, n_high, n_low, t_feats.numpy(), t_target.numpy(), t_match.numpy(), pred_ok,
                             state.settings)
    got = state.bank.protos.asnumpy()
    np.testing.assert_allclose(got[valid > 0], expected[valid > 0], atol=1e-5)
    np.testing.assert_array_equal(state.bank.valid.asnumpy(), valid)


def test_ema_creates_the_prototype_of_a_class_that_had_none():
    bank = PrototypeBank(num_classes=2, slots=2, feat_dim=2, momentum=0.9, fault_weight=1.0)
    bank.protos.set_data(Tensor(np.array([[[1, 0], [1, 0]], [[0, 0], [0, 0]]], np.float32)))
    bank.valid.set_data(Tensor(np.array([[1, 0], [0, 0]], np.float32)))
    feats = Tensor(np.array([[0, 2], [0, 4], [2, 0]], np.float32))
    target = Tensor(np.array([1, 1, 0], np.int32))
    scores, match = bank.scores(feats)
    match = Tensor(np.array([[0, 1], [0, 1], [0, 1]], np.int32))  # class 1 has no slot to match: must not matter
    bank(feats, target, scores, match)
    np.testing.assert_allclose(bank.protos.asnumpy()[1, 0], [0, 3])  # := the mean, no EMA from zeros
    np.testing.assert_allclose(bank.protos.asnumpy()[0, 0], [0.9 + 0.1 * 2, 0])
    np.testing.assert_array_equal(bank.valid.asnumpy(), [[1, 0], [1, 0]])


# -------------------------------------------------------------------------------------------- state + schedule


def test_state_round_trip_across_clustering():
    options = {"class_balance_sample": True, "threshold_type": "csp", "thre_min": 0.5, "thre_max": 0.9}
    original = filled_state(seed=11, steps=2, **options)
    saved = copy.deepcopy(original.state_dict())
    assert not np.allclose(saved["confidence_ema"], 0.8)
    restored = brpg_state(tiny_cfg(**options), log=lambda message: None)
    restored.load_state_dict(saved)
    for s, c in np.ndindex(2, C):
        for a, b in zip(original.queues.contents(s, c), restored.queues.contents(s, c)):
            np.testing.assert_array_equal(a, b)
    for state in (original, restored):  # the same next step on both
        rng = np.random.default_rng(12)
        state.enqueue(*random_step(rng), rng)
    for name, value in original.state_dict().items():
        np.testing.assert_array_equal(value, restored.state_dict()[name])
    assert original.state_dict()["queue_fill"].sum() > 0
    original.cluster()
    restored.cluster()
    after = original.state_dict()
    np.testing.assert_array_equal(after["protos"], restored.bank.protos.asnumpy())
    assert after["queue_rows"].shape[2] == 0 and int(after["clustered"]) == 1
    resumed = brpg_state(tiny_cfg(**options))
    resumed.load_state_dict(copy.deepcopy(after))
    assert resumed.clustered and not resumed.should_cluster(epoch=3, step=0)
    np.testing.assert_array_equal(resumed.bank.protos.asnumpy(), after["protos"])
    np.testing.assert_array_equal(resumed.bank.valid.asnumpy(), after["proto_valid"])


def test_state_load_rejects_another_config():
    state = filled_state(steps=1)
    other = brpg_state(tiny_cfg(queue_len=8))
    with pytest.raises(UserError, match="queue_rows has shape"):
        other.load_state_dict(state.state_dict(), source="last.ckpt")


def test_schedule_window_and_clustering_point():
    state = brpg_state(tiny_cfg(sample_delay=1, sample_last=2))
    assert [state.in_sampling_window(e) for e in range(5)] == [False, True, True, False, False]
    assert [state.loss_active(e) for e in range(5)] == [False, False, False, True, True]
    assert not state.should_cluster(2, 5) and state.should_cluster(3, 0)
    state.cluster()
    assert not state.should_cluster(3, 1)


def test_pseudo_threshold_ramp_and_grid():
    iters = 638  # VOC 366 on 4 GPUs
    assert pseudo_threshold_at(2 * iters, iters, 80, 0.8, 0.95, 5) == pytest.approx(0.794)
    assert pseudo_threshold_at(80 * iters, iters, 80, 0.8, 0.95, 5) == pytest.approx(0.95)
    assert grid_positions(513, 32).tolist() == list(range(0, 513, 16))
    assert grid_positions(769, 32).tolist() == list(range(0, 745, 24)) + [768]
    assert grid_positions(17, 32).tolist() == [0, 16]  # repeated zeros count once
    assert grid_coords(513, 769, 32).shape == (33 * 33, 2)


# ------------------------------------------------------------------------------------------------ graph mode


@pytest.mark.numeric
def test_per_step_functions_compile_under_jit():
    eager = filled_state(seed=13, steps=0)
    compiled = filled_state(seed=13, steps=0)
    compiled._allocate_queues()
    enqueue = ms.jit(compiled.enqueue_step.construct)
    rng = np.random.default_rng(14)
    rep_l, logits_l, label, rep_u, logits_u = random_step(rng)
    noise_l, noise_u = Tensor(uniform_noise(rng, B * h * h)), Tensor(uniform_noise(rng, B * h * h))
    enqueue(rep_l, logits_l, Tensor(label), rep_u, logits_u, noise_l, noise_u)
    eager._allocate_queues()
    eager.enqueue_step(rep_l, logits_l, Tensor(label), rep_u, logits_u, noise_l, noise_u)
    # compiled vs eager are two code paths: which pixel enters which queue is the same where no prediction and no
    # confidence is within rounding of a tie or of the 0.8 threshold; the stored rows (copied features, softmax
    # confidences) agree to a few ulps
    for logits in (logits_l, logits_u):
        values = logits.asnumpy().astype(np.float64)
        probs = np.exp(values - values.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        assert_well_posed(top2_margin(values, axis=1), DECISION_TOL, "predicted class")
        assert_well_posed(np.abs(probs.max(1) - 0.8), DECISION_TOL, "confidence vs the 0.8 threshold")
    np.testing.assert_array_equal(compiled.queues.fill.asnumpy(), eager.queues.fill.asnumpy())
    np.testing.assert_allclose(compiled.queues.bank.asnumpy(), eager.queues.bank.asnumpy(), rtol=8 * FLOAT32_EPS,
                               atol=0)

    state, protos, _ = clustered_state(np.random.default_rng(15))
    inputs = [Tensor(a) for a in loss_inputs(np.random.default_rng(16))]
    grid, _, threshold = state.step_inputs(rng, 4, 0, 10, B)

    def step(rep_l, label, rep_u, pseudo, conf, noise):
        loss, feats, target, scores, match = state.loss_cell(rep_l, label, grid, rep_u, pseudo, conf, noise, threshold)
        return ms.ops.depend(loss, state.bank(feats, target, scores, match))

    loss = ms.jit(step)(*inputs)
    eager_state, _, _ = clustered_state(np.random.default_rng(15))
    eager_loss, *aux = eager_state.loss_cell(inputs[0], inputs[1], grid, *inputs[2:], threshold)
    eager_state.ema_update(*aux)
    assert float(loss.asnumpy()) == pytest.approx(float(eager_loss.asnumpy()), abs=1e-6)
    np.testing.assert_allclose(state.bank.protos.asnumpy(), eager_state.bank.protos.asnumpy(), atol=1e-6)
    assert np.abs(state.bank.protos.asnumpy() - protos).max() > 0


# ---------------------------------------------------------------------------------------------------- configs


def test_experiment_configs_hold_every_brpg_key():
    paths = sorted(glob.glob(os.path.join(REPO_ROOT, "experiments", "*", "*", "brpg", "config.yaml")))
    assert len(paths) == 9
    for path in paths:
        cfg = load_config(path)
        assert brpg_enabled(cfg) and "proto_head" not in cfg["net"] and cfg["net"]["decoder"]["kwargs"]["rep_head"]
        settings = BRPGSettings.from_config(cfg, cfg["net"]["num_classes"])
        assert set(cfg["trainer"]["prototype"]) == set(BRPGSettings.__dataclass_fields__)
        window = (3, 3) if "cityscapes" in path else (1, 1)
        assert (settings.sample_delay, settings.sample_last) == window
        assert not settings.divide_loss_by_world_size and settings.sync_prototype_ema


@pytest.mark.parametrize("change, message", [
    ({"threshold_typ": "fix"}, "unknown key"),
    ({"threshold_type": "csp"}, "required by threshold_type csp"),
    ({"type": "random"}, "broken upstream"),
    ({"sup_sample": "random"}, "not implemented upstream"),
    ({"sample_delay": 0}, "sampling during the supervised warm-up"),
    ({"queue_len": 0}, "an integer >= 1"),
])
def test_settings_errors_name_the_key(change, message):
    with pytest.raises(UserError, match=message):
        BRPGSettings.from_config(tiny_cfg(**change), C)
