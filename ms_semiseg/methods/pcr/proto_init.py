"""Prototype initialisation (spec C.1): per-class k-means of `rep_clf` features of the labeled images.

Procedure: run a (supervised) model in eval mode over the labeled training images (whole images, no
augmentation), upsample `rep_clf` to the input size (bilinear, align_corners=True, as the prototype head does),
take one random pixel per cell of a G x G patch grid (the training patch mask, spec C.2), drop ignored pixels,
group by ground-truth class and keep at most `per_class_cap` pixels per class (a uniform sample of everything
seen). K-means on the raw features (the "perpixel" file name; cosine-based inference would also justify
L2-normalising first) gives K micro-prototypes per class.

The file is the upstream `class_wise_protos_{K}_perpixel.pickle`: class c -> list of K float32 arrays of D=512,
bank row c*K + k (c-major), which is `CosineProtoHead.proto_list`'s layout.

CLI: `python -m ms_semiseg init-protos --config CFG --ckpt SUP.ckpt --out protos.pickle`.
"""

import io
import logging
import os
import pickle
from dataclasses import dataclass

import mindspore as ms
import numpy as np

from ms_semiseg.config import get, load_config, net_config, resolve_path
from ms_semiseg.data.datasets import dataset_kind
from ms_semiseg.data.palette import class_names
from ms_semiseg.data.transforms import normalize
from ms_semiseg.device import set_device
from ms_semiseg.errors import UserError
from ms_semiseg.models import create_model
from ms_semiseg.models.layers import resize_bilinear
from ms_semiseg.engine.masks import patch_cells
from ms_semiseg.engine.seeds import Stream, stream_rng
from ms_semiseg.engine.pipeline import train_readers
from ms_semiseg.engine.train_data import DEFAULT_GRANULARITY, train_data
from ms_semiseg.utils.atomic import write_bytes_atomic
from ms_semiseg.utils.checkpoint import load_into_model, model_shapes, read_checkpoint, strip_prefix

LOG = logging.getLogger(__name__)
DEFAULT_PER_CLASS_CAP = 10000
DEFAULT_SEED = 2  # U2PL's train.sh seed
KMEANS_N_INIT = 10
# Upsampled channels per resize call: bounds the transient map to ~64 MB whatever the image size.
_UPSAMPLE_FLOATS = 16 * 1024 * 1024
# Heads the feature trunk does not need: a supervised checkpoint may carry them (aux, U2PL's representation
# head) or lack them (the prototype bank that is being initialised here).
_OPTIONAL_HEADS = ("auxor.", "decoder.representation.", "proto_net.")


# ---------------------------------------------------------------------------------------------- pixel sampling


def select_patch_pixels(height, width, granularity, rng):
    """Flat indices of one uniformly random pixel per cell of a granularity x granularity grid (spec C.2: cell
    side = size // G, the remainder rows/columns are never picked; a side shorter than G uses 1-pixel cells)."""
    def one_axis(size):
        starts, cell = patch_cells(size, granularity)
        return starts + rng.integers(0, cell, size=starts.size)

    rows, cols = one_axis(height), one_axis(width)
    return (rows[:, None] * width + cols[None, :]).ravel()


def sample_upsampled(rep_clf, size, flat_index):
    """Features (n, D) of rep_clf (1, D, h, w) upsampled to `size` (bilinear, align_corners=True) at the flat
    pixel indices; upsampled a few channels at a time so the full D x H x W map never exists."""
    channels = rep_clf.shape[1]
    chunk = max(1, min(channels, _UPSAMPLE_FLOATS // (size[0] * size[1])))
    parts = []
    for start in range(0, channels, chunk):
        upsampled = resize_bilinear(rep_clf[:, start:start + chunk], size).asnumpy()
        parts.append(upsampled.reshape(upsampled.shape[1], -1)[:, flat_index])
    return np.ascontiguousarray(np.concatenate(parts, axis=0).T, dtype=np.float32)


class _ClassReservoir:
    """At most `cap` rows per class, a uniform sample of all rows offered: each row gets a random key and the
    `cap` smallest keys are kept (bottom-k sampling), so memory stays at cap x D per class."""

    def __init__(self, num_classes, cap, rng):
        self.cap, self.rng = cap, rng
        self.keys = {c: np.empty(0) for c in range(num_classes)}
        self.rows = {c: None for c in range(num_classes)}

    def offer(self, cls, rows):
        keys = np.concatenate([self.keys[cls], self.rng.random(len(rows))])
        rows = rows if self.rows[cls] is None else np.concatenate([self.rows[cls], rows])
        keep = np.sort(np.argpartition(keys, self.cap)[:self.cap]) if len(keys) > self.cap else slice(None)
        self.keys[cls], self.rows[cls] = keys[keep], rows[keep]

    def result(self, dim):
        return {c: rows if rows is not None else np.zeros((0, dim), np.float32) for c, rows in self.rows.items()}


def _rep_clf(model, image):
    outputs = model(ms.Tensor(np.ascontiguousarray(image[None], dtype=np.float32)))
    if outputs[3] is None:
        raise ValueError("the model returns no rep_clf: build it with a proto head or decoder rep_clf: True")
    return outputs[3]


def collect_class_features(model, dataset_iter, num_classes, per_class_cap, seed, granularity=DEFAULT_GRANULARITY,
                           ignore_label=255):
    """{class c: float32 (n_c, D)} of patch-sampled `rep_clf` pixels (module notes), n_c <= per_class_cap.

    model: a ModelBuilder (run in eval mode here, its mode restored after); dataset_iter: (float32 (3,H,W)
    normalised image, (H,W) integer label) pairs. Pixels of ignore_label are skipped; a label value outside
    0..num_classes-1 is an error.
    """
    rng = stream_rng(Stream.PROTO_INIT_PIXELS, seed)
    reservoir = _ClassReservoir(num_classes, per_class_cap, stream_rng(Stream.PROTO_INIT_RESERVOIR, seed))
    dim = None
    was_training = model.training
    model.set_train(False)
    try:
        for image, label in dataset_iter:
            label = np.asarray(label).astype(np.int64)
            index = select_patch_pixels(*label.shape, granularity, rng)
            target = label.ravel()[index]
            keep = target != ignore_label
            if np.any(keep & ((target < 0) | (target >= num_classes))):
                raise ValueError(f"label values outside 0..{num_classes - 1} and {ignore_label}")
            feats = sample_upsampled(_rep_clf(model, image), label.shape, index[keep])
            dim = feats.shape[1]
            for cls in np.unique(target[keep]):
                reservoir.offer(int(cls), feats[target[keep] == cls])
    finally:
        model.set_train(was_training)
    return reservoir.result(dim or 0)


# --------------------------------------------------------------------------------------------------- k-means


def _class_centroids(feats, k, seed):
    """K centroids of one class. With at most K distinct features there is nothing to cluster: the distinct
    features are repeated in turn up to K (spec C.1, "duplicate centroids")."""
    # imported here: every CLI command imports this module, and scikit-learn takes ~1.5 s to import
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    distinct = np.unique(feats, axis=0)
    if len(distinct) <= k:
        return distinct[np.arange(k) % len(distinct)]
    # One OpenMP thread: on the 2-core box a 10000 x 512 fit took 4.5 s with 1 thread and 19 s with 2 (threads
    # spin against MindSpore's pool and other processes); the per-class problems are too small to gain from more.
    with threadpool_limits(limits=1):
        kmeans = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit(feats)
    return kmeans.cluster_centers_


def kmeans_prototypes(features_by_class, num_classes, k, seed, dim=512):
    """float32 (C*K, D) bank, row c*K + k (c-major): K-means (scikit-learn, n_init=10, seeded) per class.

    A class without pixels gets K zero vectors (logged): cosine scores 0 against them, and the first momentum
    update then points the prototype exactly at the class mean (cosine ignores the 0.01 scale), where a random
    vector would bias the direction for hundreds of updates.
    """
    bank = np.zeros((num_classes, k, dim), dtype=np.float32)
    empty = []
    for cls in range(num_classes):
        feats = np.asarray(features_by_class.get(cls, np.zeros((0, dim))), dtype=np.float32)
        if len(feats) == 0:
            empty.append(cls)
            continue
        if feats.ndim != 2 or feats.shape[1] != dim:
            raise ValueError(f"class {cls} features have shape {feats.shape}, expected (n, {dim})")
        bank[cls] = _class_centroids(feats, k, seed)
    if empty:
        LOG.warning("classes %s have no labeled pixels: their prototypes start at zero", empty)
    return bank.reshape(num_classes * k, dim)


# ------------------------------------------------------------------------------------------------ pickle file


def save_proto_pickle(path, bank, num_classes, k):
    """Writes the bank (C*K, D) atomically as the upstream pickle: {c: [K float32 arrays of D]}."""
    bank = np.asarray(bank, dtype=np.float32)
    if bank.ndim != 2 or bank.shape[0] != num_classes * k:
        raise ValueError(f"bank shape {bank.shape}, expected ({num_classes} * {k}, D)")
    per_class = {cls: [bank[cls * k + j].copy() for j in range(k)] for cls in range(num_classes)}
    # protocol 4 is readable by the Python 3.7 / numpy 1.x environments of the upstream code
    write_bytes_atomic(path, pickle.dumps(per_class, protocol=4))


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles containers of numpy arrays only: a prototype file has no reason to run other code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")} | {
        (module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")} | {
        (module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"contains {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path):
    if not os.path.isfile(path):
        raise UserError(f"{path}: prototype file not found, expected a class_wise_protos_K_perpixel.pickle")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return _NumpyUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # pickle raises many types for foreign or damaged files
        raise UserError(f"{path}: not a readable prototype pickle ({str(exc)[:120] or type(exc).__name__}), "
                        "expected a pickle of numpy arrays") from None


def _per_class_entries(content, path, num_classes):
    if isinstance(content, dict):
        if set(content) != set(range(len(content))):
            raise UserError(f"{path}: class keys {list(content)[:8]} are not 0..{len(content) - 1}, "
                            "expected one entry per class index")
        content = [content[cls] for cls in range(len(content))]
    if not isinstance(content, (list, tuple)):
        raise UserError(f"{path}: holds a {type(content).__name__}, expected a list or dict indexed by class")
    if len(content) != num_classes:
        raise UserError(f"{path}: has {len(content)} classes, expected {num_classes} (net.num_classes)")
    return content


def load_proto_pickle(path, num_classes, k, dim=512):
    """float32 (C*K, D) bank from an upstream-format pickle (a list or dict indexed by class, each a list of K
    D-vectors or a (K, D) array); UserError naming the file on any mismatch."""
    entries = _per_class_entries(_read_pickle(path), path, num_classes)
    bank = np.zeros((num_classes, k, dim), dtype=np.float32)
    for cls, protos in enumerate(entries):
        try:
            protos = np.stack([np.asarray(p, dtype=np.float32) for p in protos])
        except (TypeError, ValueError):
            raise UserError(f"{path}: class {cls} is not a list of equal-length vectors, expected {k} "
                            f"vectors of {dim}") from None
        if protos.shape != (k, dim):
            raise UserError(f"{path}: class {cls} has prototypes of shape {protos.shape}, expected ({k}, {dim}) "
                            "(net.proto_head.num_micro_proto x in_planes)")
        if not np.all(np.isfinite(protos)):
            raise UserError(f"{path}: class {cls} has NaN/inf prototypes, expected finite values")
        bank[cls] = protos
    return bank.reshape(num_classes * k, dim)


# -------------------------------------------------------------------------------------------- whole pipeline


def labeled_images(data, data_root=None, skipped=None):
    """(float32 normalised (3,H,W), int32 (H,W) label) of every labeled training image of the TrainData `data`,
    whole and unaugmented.

    With `dataset.on_bad_image: skip` an unreadable sample is left out (recorded in `skipped`, a SkippedSamples,
    when given); otherwise its UserError stops the run."""
    labeled, _ = train_readers(data, semi=False, data_root=data_root)
    skip = data.on_bad_image == "skip"
    for index in range(len(labeled)):
        try:
            image, label, _ = labeled[index]
        except UserError as exc:
            if not skip:
                raise
            if skipped is not None:
                skipped.add(labeled, index, exc)
            continue
        yield normalize(image, data.mean, data.std), label.astype(np.int32)


@dataclass(frozen=True)
class ProtoSettings:
    """PCR's prototype bank (`net.proto_head`), validated at start-up: `num_classes` x `k` prototypes of `dim`."""
    num_classes: int
    k: int  # num_micro_proto
    dim: int  # in_planes
    granularity: int  # select_granularity: G of the G x G patch grid the initialisation samples
    init_path: str = None  # init_proto_path (relative to the config's folder); None: k-means at the first semi epoch


def proto_settings(cfg):
    """ProtoSettings of the config's net section (num_classes, proto_head)."""
    proto_cfg = get(cfg, "net.proto_head")
    if not isinstance(proto_cfg, dict) or not isinstance(proto_cfg.get("num_micro_proto"), int):
        raise UserError("net.proto_head.num_micro_proto: missing, expected an int K (the PCR config's proto head)")
    return ProtoSettings(int(get(cfg, "net.num_classes")), proto_cfg["num_micro_proto"],
                         int(proto_cfg.get("in_planes", 512)),
                         int(proto_cfg.get("select_granularity", DEFAULT_GRANULARITY)),
                         resolve_path(cfg, proto_cfg.get("init_proto_path")) or None)


def init_prototypes(model, data, proto, seed=DEFAULT_SEED, per_class_cap=DEFAULT_PER_CLASS_CAP, data_root=None,
                    skipped=None):
    """(bank float32 (C*K, D), {class: sampled pixel count}) from `model` over the labeled training images;
    `data`: TrainData, `proto`: ProtoSettings."""
    features = collect_class_features(model, labeled_images(data, data_root, skipped), proto.num_classes,
                                      per_class_cap, seed, proto.granularity, data.ignore_label)
    bank = kmeans_prototypes(features, proto.num_classes, proto.k, seed, proto.dim)
    return bank, {cls: len(rows) for cls, rows in features.items()}


# ------------------------------------------------------------------------------------------------------- CLI


def feature_net_config(cfg):
    """The config's network without the heads init-protos does not use (aux, representation, prototypes)."""
    net_cfg = net_config(cfg)  # a deep copy
    net_cfg.pop("proto_head", None)
    net_cfg.pop("aux_loss", None)
    kwargs = dict(net_cfg["decoder"].get("kwargs") or {})
    net_cfg["decoder"]["kwargs"] = {**kwargs, "rep_head": False, "rep_clf": True}
    return net_cfg


def load_feature_model(cfg, ckpt_path):
    """Encoder + decoder of the config, loaded strictly from `ckpt_path` except for the optional heads."""
    model = create_model(feature_net_config(cfg))
    wanted = model_shapes(model)
    params = {name: value for name, value in strip_prefix(read_checkpoint(ckpt_path)).items()
              if name in wanted or not name.startswith(_OPTIONAL_HEADS)}
    load_into_model(model, ckpt_path, params=params)
    model.set_train(False)
    return model


def add_arguments(parser):
    parser.add_argument("--config", required=True, help="the PCR config.yaml (dataset, net and proto_head)")
    parser.add_argument("--ckpt", required=True, help="supervised checkpoint (.ckpt) whose rep_clf features are used")
    parser.add_argument("--out", required=True, help="output pickle, e.g. class_wise_protos_4_perpixel.pickle")
    parser.add_argument("--data-root", help="override dataset.train.data_root")
    parser.add_argument("--device", help="CPU, GPU or Ascend (default: GPU when usable, else CPU)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="pixel sampling and k-means seed")
    parser.add_argument("--per-class-cap", type=int, default=DEFAULT_PER_CLASS_CAP,
                        help="most sampled pixels kept per class (default %(default)s)")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")


def _class_labels(cfg, num_classes):
    try:
        names = class_names(dataset_kind(get(cfg, "dataset") or {}))
    except UserError:
        names = ()
    return [names[c] if c < len(names) else str(c) for c in range(num_classes)]


def run(args):
    if args.per_class_cap < 1:
        raise UserError(f"--per-class-cap {args.per_class_cap}: expected a positive int")
    cfg = load_config(args.config, args.opts)
    proto, data = proto_settings(cfg), train_data(cfg)
    num_classes = proto.num_classes
    set_device(args.device)
    model = load_feature_model(cfg, args.ckpt)
    bank, counts = init_prototypes(model, data, proto, args.seed, args.per_class_cap, args.data_root)
    save_proto_pickle(args.out, bank, num_classes, proto.k)
    for cls, name in enumerate(_class_labels(cfg, num_classes)):
        note = "" if counts[cls] else "  (no pixels: zero prototypes)"
        print(f"class {cls:2d} {name:<14s} {counts[cls]:7d} pixels{note}")
    print(f"wrote {num_classes} x {proto.k} prototypes to {os.path.abspath(args.out)}")
    return 0
