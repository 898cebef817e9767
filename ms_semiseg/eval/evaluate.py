"""`python -m ms_semiseg eval`: a checkpoint's mIoU on a validation split with the upstream protocol (spec B.8).

Protocols (`--protocol`, default by dataset): `whole` (VOC: each image at its original size), `sliding`
(Cityscapes: long side resized to --base-size 2048, windows of the val crop 769 every ceil(769*2/3) pixels,
logits summed) and `center-crop` (the training-time proxy). `--scales` and `--flip` sum the logits of more
passes. Both heads are scored: the linear classifier and, when the model has one, the prototype head.

Output: a progress bar (stderr); per-class IoU tables of both heads; `metrics.json` (atomic write; IoUs in
percent); with `--save-dir`, `gray/<id>.png` (class indices) and `color/<id>.png` (palette) of the linear head;
and, as the last line, `mIoU: <linear> (proto: <proto>)` in percent (`n/a` without a prototype head).
"""
import json
import os
import sys
import time

from ms_semiseg.errors import UserError
from ms_semiseg.eval.predictor import STRATEGIES

PROTOCOLS = ("whole", "sliding", "center-crop")
DEFAULT_PROTOCOL = {"pascal": "whole", "cityscapes": "sliding", "custom": "whole"}
SLIDING_STRIDE_RATE = 2 / 3
DEFAULT_BASE_SIZE = 2048
DEFAULT_CROP = {"pascal": 513, "cityscapes": 769, "custom": 513}  # when the config has no dataset.val.crop
HEADS = (("pred", "linear"), ("proto", "proto"))  # (model output, name in tables, metrics.json and the last line)


# ------------------------------------------------------------------------------------------------ arguments

def add_model_arguments(parser):
    """Arguments every model-running command shares (eval, infer)."""
    parser.add_argument("--config", required=True, help="experiment config.yaml (upstream U2PL/PCR schema)")
    parser.add_argument("--ckpt", required=True,
                        help="MindSpore .ckpt or .safetensors (ours, converted, or `module.`-prefixed)")
    parser.add_argument("--device", default=None, help="CPU or GPU (default: GPU when MindSpore can use one)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. dataset.val.data_list=/path/val.txt")
    parser.add_argument("--strategy", choices=STRATEGIES, default="static",
                        help="how MindSpore runs the network; same results, different speed (default: static)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for MindSpore kernels")
    parser.add_argument("--weights", choices=("teacher", "student"), default=None,
                        help="with a training state (last.ckpt): which model to run (default: the teacher where "
                             "there is one, the model U2PL/PCR validate; best.ckpt holds only that one)")


def add_protocol_arguments(parser, protocols=PROTOCOLS):
    parser.add_argument("--protocol", choices=protocols, default=None,
                        help="default: whole for VOC, sliding for Cityscapes (the upstream protocols)")
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0], help="test scales (default: 1.0)")
    parser.add_argument("--flip", action="store_true", help="add the logits of the mirrored image")
    parser.add_argument("--crop-size", nargs="+", type=int, default=None, metavar="SIZE",
                        help="window (sliding) or crop (center-crop) size, one or two ints "
                             "(default: the config's dataset.val.crop.size)")
    parser.add_argument("--base-size", type=int, default=DEFAULT_BASE_SIZE,
                        help="sliding protocol: long side after resizing (default: 2048)")


def add_arguments(parser):
    add_model_arguments(parser)
    add_protocol_arguments(parser)
    parser.add_argument("--data-root", default=None, help="dataset folder (default: the config's dataset.val)")
    parser.add_argument("--save-dir", default=None, help="write gray and color PNGs (and metrics.json) here")
    parser.add_argument("--metrics", default=None,
                        help="metrics.json path (default: <save-dir>/metrics.json, else ./metrics.json)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# ------------------------------------------------------------------------------------------------ protocol

class Protocol:
    """One of the upstream protocols with its settings: `logits(predict, image, label)` -> ({head: (C,H,W)}, label)."""

    def __init__(self, name, scales=(1.0,), flip=False, crop_size=(513, 513), base_size=DEFAULT_BASE_SIZE):
        self.name, self.scales, self.flip = name, tuple(scales), bool(flip)
        self.crop_size, self.base_size = tuple(crop_size), int(base_size)

    @property
    def shapes_per_image(self):
        """Distinct network input shapes one image needs (sliding windows and crops all have the crop size)."""
        return len(set(self.scales)) if self.name == "whole" else 1

    def forward_sizes(self, height, width):
        """Input sizes (h, w) of the network forwards for one image of that size (sliding: one window per scale
        and flip, a lower bound); an `auto` predictor decides by their counts (ms_semiseg.eval.predictor)."""
        passes = 2 if self.flip else 1
        if self.name == "whole":
            return [(round(height * scale), round(width * scale)) for scale in self.scales for _ in range(passes)]
        return [self.crop_size] * (len(self.scales) * passes if self.name == "sliding" else 1)

    def logits(self, predict, image, label=None):
        from ms_semiseg.eval import protocols
        if self.name == "whole":
            return protocols.whole_image(predict, image, self.scales, self.flip), label
        if self.name == "sliding":
            return protocols.sliding_window(predict, image, self.crop_size, SLIDING_STRIDE_RATE, self.base_size,
                                            self.scales, self.flip), label
        return protocols.center_crop(predict, image, label, self.crop_size)

    def describe(self):
        settings = {"protocol": self.name, "scales": list(self.scales), "flip": self.flip}
        if self.name != "whole":
            settings["crop_size"] = list(self.crop_size)
        if self.name == "sliding":
            settings.update(base_size=self.base_size, stride_rate=SLIDING_STRIDE_RATE)
        return settings


def _crop_size_from(args, transform, kind):
    if args.crop_size is None:
        return transform.crop_size or (DEFAULT_CROP[kind],) * 2
    if len(args.crop_size) not in (1, 2) or min(args.crop_size) < 1:
        raise UserError(f"--crop-size {' '.join(map(str, args.crop_size))}: expected one or two positive ints")
    return tuple(args.crop_size) * (3 - len(args.crop_size))


def protocol_from_args(args, transform, kind):
    """The Protocol the command line asks for, with the dataset's upstream default."""
    name = args.protocol or DEFAULT_PROTOCOL[kind]
    bad_scales = [s for s in args.scales if not s > 0]
    if bad_scales:
        raise UserError(f"--scales {bad_scales[0]}: expected positive scale factors, e.g. --scales 0.75 1.0 1.25")
    if name == "center-crop" and (list(args.scales) != [1.0] or args.flip):
        raise UserError("--protocol center-crop: takes one crop at scale 1.0, expected no --scales/--flip")
    if args.base_size < 1:
        raise UserError(f"--base-size {args.base_size}: expected a positive long-side length")
    return Protocol(name, args.scales, args.flip, _crop_size_from(args, transform, kind), args.base_size)


# ------------------------------------------------------------------------------------------------ evaluation

def _image_size(path):
    """(h, w) from the file header (no decoding); (0, 0) when unreadable: the reader reports that later."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except Exception:  # any decoding problem is reported by the dataset reader with the file name
        return 0, 0


def order_by_size(image_paths, sizes=None):
    """Indices of the images grouped by size (given order within a size), so that each size is compiled once
    (see ms_semiseg.eval.predictor); the dataset mIoU is a sum over images, so the order does not change it."""
    sizes = sizes or [_image_size(path) for path in image_paths]
    return sorted(range(len(sizes)), key=lambda index: sizes[index])


def planned_order(image_paths, predict, protocol):
    """order_by_size, after telling an `auto` predictor how many forwards each input size will get; then the
    images with a compiled-graph forward go before those run only op by op, so every graph is released before the
    op-by-op forwards start (a graph compiled after op-by-op forwards adds its memory to PyNative's pool, which stays
    allocated: docs/performance.md "Memory"). Static and pynative predictors keep the plain size order."""
    from collections import Counter
    sizes = [_image_size(path) for path in image_paths]
    order = order_by_size(image_paths, sizes)
    if not hasattr(predict, "expect"):
        return order
    predict.expect(Counter(size for height, width in sizes for size in protocol.forward_sizes(height, width)))

    def op_by_op_only(index):
        return not any(predict.uses_graph(size) for size in protocol.forward_sizes(*sizes[index]))
    return sorted(order, key=op_by_op_only)  # stable: sizes stay grouped within each part


def progress_bar(iterable, total, enabled, desc="eval"):
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True)


def evaluate_dataset(dataset, predict, protocol, mean, std, on_prediction=None, progress=True):
    """{head: IoUAccumulator} over the dataset; `on_prediction(sample_id, {head: class map})` sees every image."""
    from ms_semiseg.data import normalize
    from ms_semiseg.eval import IoUAccumulator, to_class_map
    accumulators = {}
    image_paths = [dataset.sample_paths(index)[1] for index in range(len(dataset))]
    for index in progress_bar(planned_order(image_paths, predict, protocol), len(dataset), progress):
        image, label, sample_id = dataset[index]
        logits, label = protocol.logits(predict, normalize(image, mean, std), label)
        predictions = {head: to_class_map(value) for head, value in logits.items()}
        for head, prediction in predictions.items():
            accumulators.setdefault(head, IoUAccumulator(dataset.num_classes, dataset.ignore_label))
            accumulators[head].update(prediction, label)
        if on_prediction is not None:
            on_prediction(sample_id, predictions)
    return accumulators


def png_writer(save_dir, palette):
    """on_prediction callback writing <save_dir>/gray/<id>.png and <save_dir>/color/<id>.png (linear head)."""
    from ms_semiseg.data import colorize, save_png_atomic

    def write(sample_id, predictions):
        save_png_atomic(os.path.join(save_dir, "gray", f"{sample_id}.png"), predictions["pred"])
        save_png_atomic(os.path.join(save_dir, "color", f"{sample_id}.png"), colorize(predictions["pred"], palette))
    return write


# ------------------------------------------------------------------------------------------------ reporting

def head_results(accumulators, names):
    """{head name: {'miou', 'iou': {class: IoU}}} in percent; None for a head the model does not have."""
    results = {}
    for key, head in HEADS:
        accumulator = accumulators.get(key)
        results[head] = None if accumulator is None else {
            "miou": 100.0 * accumulator.miou(),
            "iou": {name: 100.0 * float(value) for name, value in zip(names, accumulator.iou())}}
    return results


def final_line(results):
    """`mIoU: <linear> (proto: <proto>)`, percent with two decimals, `n/a` for a missing head."""
    def percent(head):
        return "n/a" if results.get(head) is None else f"{results[head]['miou']:.2f}"
    return f"mIoU: {percent('linear')} (proto: {percent('proto')})"


def print_tables(accumulators, names):
    for key, head in HEADS:
        if key in accumulators:
            print(f"\n{head} head")
            print(accumulators[key].format_table(names))


def write_metrics(path, payload):
    from ms_semiseg.utils.atomic import write_text_atomic
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ command

def resolved_dataset_config(cfg, data_root=None):
    """The config's dataset section with val paths made absolute (relative to the config's folder)."""
    import copy
    from ms_semiseg.config import resolve_path
    dataset_cfg = copy.deepcopy(cfg.get("dataset") or {})
    val = dataset_cfg.setdefault("val", {})
    for key in ("data_root", "data_list"):
        val[key] = resolve_path(cfg, val.get(key))
    if data_root:
        val["data_root"] = os.path.abspath(os.path.expanduser(data_root))
    return dataset_cfg


def metrics_path(args):
    if args.metrics:
        return os.path.abspath(args.metrics)
    return os.path.abspath(os.path.join(args.save_dir or ".", "metrics.json"))


def prepare_evaluation(args, cfg):
    """Everything checked before the model is loaded: the dataset (every file present), protocol, output folders."""
    from ms_semiseg.config import net_config
    from ms_semiseg.data import build_dataset, build_transform, dataset_kind
    from ms_semiseg.utils.atomic import ensure_writable_dir
    num_classes = int(net_config(cfg)["num_classes"])
    dataset_cfg = resolved_dataset_config(cfg, args.data_root)
    kind = dataset_kind(dataset_cfg)
    transform = build_transform(dataset_cfg, "val")
    protocol = protocol_from_args(args, transform, kind)
    dataset = build_dataset(dataset_cfg, "val", num_classes=num_classes)
    ensure_writable_dir(os.path.dirname(metrics_path(args)), "metrics folder")
    if args.save_dir:
        ensure_writable_dir(args.save_dir, "--save-dir folder")
    return kind, transform, protocol, dataset


def metrics_payload(args, dataset, kind, protocol, run_info, results):
    return {"config": os.path.abspath(args.config), "checkpoint": os.path.abspath(args.ckpt),
            "weights": args.weights or "as stored", "dataset": kind,
            "data_root": dataset.data_root, "data_list": dataset.list_path, "num_images": len(dataset),
            "num_classes": dataset.num_classes, **protocol.describe(), **run_info, "unit": "percent",
            "miou": results["linear"]["miou"],
            "miou_proto": None if results["proto"] is None else results["proto"]["miou"], "heads": results}


def run(args):
    from ms_semiseg.config import load_config
    from ms_semiseg.eval.predictor import prepare_device
    from ms_semiseg.utils.lock import FolderLock

    cfg = load_config(args.config, args.opts)
    device = prepare_device(args.device, args.threads)
    kind, transform, protocol, dataset = prepare_evaluation(args, cfg)
    if not args.save_dir:
        return _evaluate(args, cfg, device, kind, transform, protocol, dataset)
    # two evaluations writing PNGs (and metrics.json) into one folder would mix their outputs: one at a time
    with FolderLock(args.save_dir, "--save-dir folder", " (--save-dir)"):
        return _evaluate(args, cfg, device, kind, transform, protocol, dataset)


def _evaluate(args, cfg, device, kind, transform, protocol, dataset):
    from ms_semiseg.data.datasets import class_names_for, palette_for_config
    from ms_semiseg.eval.predictor import Predictor, load_model
    start = time.perf_counter()
    model = load_model(cfg, args.ckpt, weights=args.weights)
    predictor = Predictor(model, args.strategy, max_cached_shapes=protocol.shapes_per_image)
    on_prediction = png_writer(args.save_dir, palette_for_config(cfg)) if args.save_dir else None
    accumulators = evaluate_dataset(dataset, predictor, protocol, transform.mean, transform.std, on_prediction,
                                    progress=not args.no_progress)
    elapsed = time.perf_counter() - start

    names = list(class_names_for(cfg))
    results = head_results(accumulators, names)
    print_tables(accumulators, names)
    stats = predictor.stats()
    run_info = {"device": device, "strategy": args.strategy, **stats,
                "elapsed_s": round(elapsed, 3), "images_per_s": round(len(dataset) / elapsed, 4)}
    output = metrics_path(args)
    write_metrics(output, metrics_payload(args, dataset, kind, protocol, run_info, results))
    print(f"\n{len(dataset)} images in {elapsed:.1f} s ({len(dataset) / elapsed:.3f} images/s, {device}, "
          f"{args.strategy}: {stats['compiles']} graph compile(s), ~{stats['compile_s_est']:.1f} s compiling, "
          f"{stats['pynative_calls']} op-by-op forward(s)); metrics -> {output}")
    print(final_line(results))
    return 0
