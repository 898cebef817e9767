"""BRPG clustering at the end of the sampling window (brpg.md sections 3-4): APO, k-means, padding.

Runs once per training run, on the host (numpy + scikit-learn), so plain loops over classes are fine here.
scikit-learn's MiniBatchKMeans is called with the 0.20 defaults that upstream got implicitly (recent versions
changed batch_size and n_init), with the same random_state for every class and set, as upstream.
"""
import warnings

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.exceptions import ConvergenceWarning

from ...errors import UserError
from .settings import ERROR, PROB, SECTION

KMEANS_0_20_DEFAULTS = {"init": "k-means++", "max_iter": 100, "batch_size": 100, "verbose": 0,
                        "compute_labels": True, "tol": 0.0, "max_no_improvement": 10, "init_size": None,
                        "n_init": 3, "reassignment_ratio": 0.01}
SET_NAMES = ("high", "low")
_EPS = 1e-12


# ---------------------------------------------------------------------------------------------------- APO


def dispersion(feats, metric):
    """Spread of one queue; NaN when empty. cos_sim: mean cos(x_i, mean) (low = scattered); l2: mean distance to
    the raw mean; l2_norm: the same between L2-normalised rows and the normalised raw mean (high = scattered)."""
    if len(feats) == 0:
        return float("nan")
    x = np.asarray(feats, np.float64)
    mean = x.mean(axis=0)
    if metric == "l2":
        return float(np.linalg.norm(x - mean, axis=1).mean())
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
    unit_mean = mean / max(np.linalg.norm(mean), _EPS)
    if metric == "cos_sim":
        return float((unit @ unit_mean).mean())
    return float(np.linalg.norm(unit - unit_mean, axis=1).mean())


def apo_selection(scores, count, metric):
    """Classes that get extra prototypes: the `count` most scattered (ties included, as upstream's `<=` / `>=`
    against the count-th value). Empty queues (NaN) are never selected."""
    scores = np.asarray(scores, np.float64)
    finite = ~np.isnan(scores)
    if not finite.any():
        return np.zeros(scores.shape, bool)
    ordered = np.sort(scores[finite])
    count = min(count, ordered.size)
    if metric == "cos_sim":
        return finite & (scores <= ordered[count - 1])
    return finite & (scores >= ordered[-count])


def apo_class_count(add_proportion, num_classes):
    """Upstream: int(round(proportion * C)), at least 1 (Python's round: VOC 21 -> 1, Cityscapes 19 -> 1)."""
    return max(1, int(round(add_proportion * num_classes)))


def prototype_numbers(queues, settings, num_classes):
    """Planned prototype counts per set: int arrays (2, C) = base counts + add_num for APO's selected classes.

    queues[s][c] = (features, confidences) of set s (0 high, 1 low) and class c."""
    numbers = np.array([[settings.high_prototype_num] * num_classes, [settings.low_prototype_num] * num_classes])
    if settings.proto_add:
        count = apo_class_count(settings.add_proportion, num_classes)
        for set_id in (0, 1):
            scores = [dispersion(feats, settings.intra_var_eval) for feats, _ in queues[set_id]]
            numbers[set_id][apo_selection(scores, count, settings.intra_var_eval)] += settings.add_num
    return numbers


# ----------------------------------------------------------------------------------------------- k-means


def cluster_centers(feats, conf, k, seed, confidence_weighted=False):
    """k centers of `feats` by MiniBatchKMeans with the pinned 0.20 defaults. confidence_weighted (type `prob`):
    each center is the confidence-weighted mean of its members instead (the centroid when it has none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate rows: fewer distinct clusters than k
        kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, **KMEANS_0_20_DEFAULTS).fit(feats)
    centers = kmeans.cluster_centers_.astype(np.float32)
    if confidence_weighted:
        for cluster in range(k):
            members = kmeans.labels_ == cluster
            weight = conf[members].astype(np.float64)
            if weight.sum() > 0:
                centers[cluster] = (feats[members] * weight[:, None]).sum(axis=0) / weight.sum()
    return centers


def set_prototypes(feats, conf, k, settings, seed, where):
    """(centers (k', D), fallback message or None) of one queue; k' = k unless the queue holds fewer rows.

    Fallback (upstream crashes in sklearn): fewer rows than k -> the rows themselves are the prototypes; no rows
    -> no prototypes in this set. too_few_samples: error turns both into a UserError instead."""
    rows = len(feats)
    if rows >= k:
        return cluster_centers(feats, conf, k, seed, settings.type == PROB), None
    if settings.too_few_samples == ERROR:
        raise UserError(f"{SECTION}.too_few_samples=error: {where} holds {rows} feature(s) for {k} prototypes, "
                        "expected at least one per prototype (too_few_samples: fallback continues with fewer)")
    if rows == 0:
        return np.zeros((0, feats.shape[1]), np.float32), f"{where} is empty: no prototypes in this set"
    return np.asarray(feats, np.float32).copy(), f"{where} holds {rows} feature(s) < {k}: each is a prototype"


def pad_slots(centers, slots, dim):
    """(slots, D) block with the real centers first, padded by repeating the last one (upstream), and its mask."""
    block = np.zeros((slots, dim), np.float32)
    valid = np.zeros(slots, np.float32)
    count = len(centers)
    if count:
        block[:count] = centers
        block[count:] = centers[-1]
        valid[:count] = 1.0
    return block, valid


def build_prototypes(queues, settings, num_classes, feat_dim, seed):
    """APO + k-means for every class and set -> (protos (C, M, D), valid (C, M), messages).

    Slots [0, max_high) hold the high prototypes, [max_high, M) the low ones; `valid` marks the real ones. A
    class without any prototype is reported; its prototype is created by the first EMA update that sees it."""
    numbers = prototype_numbers(queues, settings, num_classes)
    messages = []
    for set_id, name in enumerate(SET_NAMES):
        extra = np.flatnonzero(numbers[set_id] > (settings.high_prototype_num, settings.low_prototype_num)[set_id])
        if settings.proto_add:
            messages.append(f"APO ({settings.intra_var_eval}): +{settings.add_num} {name} prototype(s) for classes "
                            f"{extra.tolist()}")
    protos = np.zeros((num_classes, settings.slots, feat_dim), np.float32)
    valid = np.zeros((num_classes, settings.slots), np.float32)
    spans = ((0, settings.max_high), (settings.max_high, settings.slots))
    for label in range(num_classes):
        for set_id, (start, stop) in enumerate(spans):
            feats, conf = queues[set_id][label]
            where = f"class {label} {SET_NAMES[set_id]} queue"
            centers, message = set_prototypes(np.asarray(feats, np.float32), np.asarray(conf, np.float32),
                                              int(numbers[set_id][label]), settings, seed, where)
            if message:
                messages.append(message)
            protos[label, start:stop], valid[label, start:stop] = pad_slots(centers, stop - start, feat_dim)
        if not valid[label].any():
            messages.append(f"class {label} has no prototype: its pixels are ignored by L_pro until an EMA update "
                            "initialises one from the first batch that contains the class")
    return protos, valid, messages
