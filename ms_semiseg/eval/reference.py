"""PyTorch reference of the evaluation pipeline (U2PL/PCR eval.py: valiadte_whole, validate_city and
intersectionAndUnion, spec B.8), written with torch ops for mIoU parity tests and `bench/eval_speed.py`.

Independent of `ms_semiseg.eval.protocols` / `metrics`: only the dataset readers are shared, so parity checks
the model port, the protocols and the metric together. torch is imported lazily (it is optional at runtime).

`python -m ms_semiseg.eval.reference --config CFG --pth PTH [--data-root DIR] [--threads N] [--json OUT]` runs it
on a split (the benchmark's PyTorch side).
"""
import argparse
import json
import math
import sys
import time

import numpy as np

HEADS = ("pred", "proto")


def torch_predict(model):
    """x (1,3,h,w) tensor -> {'pred', 'proto'} logits at (h,w), as U2PL: pred upsampled with align_corners=True;
    the PCR model's proto logits are computed at full resolution already."""
    import torch
    import torch.nn.functional as F

    def predict(x):
        with torch.no_grad():
            outputs = model(x)
        heads = {"pred": F.interpolate(outputs["pred"], size=x.shape[2:], mode="bilinear", align_corners=True)}
        if outputs.get("proto") is not None:
            heads["proto"] = outputs["proto"]
        return heads
    return predict


def _resize(x, size):
    import torch.nn.functional as F
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _add(total, part):
    return part if total is None else {head: total[head] + value for head, value in part.items()}


def net_process(predict, image, flip):
    """Logits of one (1,3,h,w) input, plus those of the mirrored input mirrored back when `flip`."""
    import torch
    outputs = predict(image)
    if flip:
        mirrored = predict(torch.flip(image, [3]))
        outputs = {head: value + torch.flip(mirrored[head], [3]) for head, value in outputs.items()}
    return outputs


def whole_image(predict, image, scales=(1.0,), flip=False):
    """valiadte_whole: per scale the whole image at (round(h*s), round(w*s)), logits resized back and summed."""
    height, width = image.shape[2:]
    total = None
    for scale in scales:
        size = (round(height * scale), round(width * scale))
        scaled = image if size == (height, width) else _resize(image, size)
        logits = net_process(predict, scaled, flip)
        total = _add(total, {head: _resize(value, (height, width)) for head, value in logits.items()})
    return total


def scale_crop_process(predict, image, crop, stride_rate, flip):
    """validate_city's inner loop: centre zero-pad to the crop, sum window logits, divide by the overlap count."""
    import torch
    import torch.nn.functional as F
    crop_h, crop_w = crop
    ori_h, ori_w = image.shape[2:]
    pad_h, pad_w = max(crop_h - ori_h, 0), max(crop_w - ori_w, 0)
    top, left = pad_h // 2, pad_w // 2
    image = F.pad(image, (left, pad_w - left, top, pad_h - top), value=0.0)
    new_h, new_w = image.shape[2:]
    stride_h, stride_w = int(math.ceil(crop_h * stride_rate)), int(math.ceil(crop_w * stride_rate))
    grid_h = int(math.ceil(float(new_h - crop_h) / stride_h) + 1)
    grid_w = int(math.ceil(float(new_w - crop_w) / stride_w) + 1)
    total, count = {}, torch.zeros((1, 1, new_h, new_w))
    for index_h in range(grid_h):
        for index_w in range(grid_w):
            end_h, end_w = min(index_h * stride_h + crop_h, new_h), min(index_w * stride_w + crop_w, new_w)
            rows, cols = slice(end_h - crop_h, end_h), slice(end_w - crop_w, end_w)
            count[:, :, rows, cols] += 1
            for head, value in net_process(predict, image[:, :, rows, cols], flip).items():
                total.setdefault(head, torch.zeros((1, value.shape[1], new_h, new_w)))
                total[head][:, :, rows, cols] += value
    return {head: (value / count)[:, :, top:top + ori_h, left:left + ori_w] for head, value in total.items()}


def sliding_window(predict, image, crop=(769, 769), stride_rate=2 / 3, base_size=2048, scales=(1.0,), flip=False):
    """validate_city: long side := round(base_size * s), sliding windows, resize back to (h,w), sum over scales."""
    height, width = image.shape[2:]
    total = None
    for scale in scales:
        long_size = round(scale * base_size)
        if height > width:
            size = (long_size, round(long_size / float(height) * width))
        else:
            size = (round(long_size / float(width) * height), long_size)
        scaled = image if size == (height, width) else _resize(image, size)
        logits = scale_crop_process(predict, scaled, crop, stride_rate, flip)
        total = _add(total, {head: _resize(value, (height, width)) for head, value in logits.items()})
    return total


def intersection_and_union(output, target, num_classes, ignore_index=255):
    """U2PL's intersectionAndUnion (numpy histograms over bins 0..K)."""
    output = output.reshape(-1).copy()
    target = target.reshape(-1)
    output[target == ignore_index] = ignore_index
    bins = np.arange(num_classes + 1)
    area_intersection, _ = np.histogram(output[output == target], bins=bins)
    area_output, _ = np.histogram(output, bins=bins)
    area_target, _ = np.histogram(target, bins=bins)
    return area_intersection, area_output + area_target - area_intersection


def to_tensor(image, mean, std):
    """HxWx3 uint8 RGB -> (1,3,H,W) float32, (x - mean) / std like U2PL's ToTensor + Normalize."""
    import torch
    x = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)
    mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std)[None].contiguous()


def evaluate_reference(model, dataset, mean, std, protocol="whole", scales=(1.0,), flip=False, crop=(769, 769),
                       stride_rate=2 / 3, base_size=2048):
    """{head: {'miou': percent, 'iou': per-class percent array}} of a torch model over a dataset."""
    predict = torch_predict(model)
    sums = {}
    for index in range(len(dataset)):
        image, label, _ = dataset[index]
        x = to_tensor(image, mean, std)
        if protocol == "whole":
            logits = whole_image(predict, x, scales, flip)
        elif protocol == "sliding":
            logits = sliding_window(predict, x, crop, stride_rate, base_size, scales, flip)
        else:
            raise ValueError(f"protocol {protocol!r}: the reference implements 'whole' and 'sliding'")
        for head, value in logits.items():
            prediction = value.max(1)[1][0].numpy()  # torch.max: ties go to the first class, as upstream
            counts = intersection_and_union(prediction, label, dataset.num_classes, dataset.ignore_label)
            previous = sums.get(head, (0, 0))
            sums[head] = (previous[0] + counts[0], previous[1] + counts[1])
    results = {}
    for head, (intersection, union) in sums.items():
        iou = intersection / (union + 1e-10)
        results[head] = {"miou": 100.0 * float(np.mean(iou)), "iou": 100.0 * iou}
    return results


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ms_semiseg.eval.reference", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--pth", required=True, help="PyTorch U2PL/PCR checkpoint (teacher_state preferred)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--opts", nargs="*", default=[])
    parser.add_argument("--protocol", choices=("whole", "sliding"), default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="write {'miou', 'miou_proto', 'elapsed_s', ...} here")
    return parser.parse_args(argv)


def _run(argv):
    import torch
    from ms_semiseg.config import load_config, net_config
    from ms_semiseg.converter import converter_module
    from ms_semiseg.data import build_dataset, build_transform, dataset_kind
    from ms_semiseg.eval.evaluate import DEFAULT_PROTOCOL, resolved_dataset_config
    torch_model_from = converter_module("parity").torch_model_from
    args = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.opts)
    dataset_cfg = resolved_dataset_config(cfg, args.data_root)
    transform = build_transform(dataset_cfg, "val")
    dataset = build_dataset(dataset_cfg, "val", num_classes=int(net_config(cfg)["num_classes"]))
    protocol = args.protocol or DEFAULT_PROTOCOL[dataset_kind(dataset_cfg)]
    start = time.perf_counter()
    model = torch_model_from(cfg, args.pth)
    results = evaluate_reference(model, dataset, transform.mean, transform.std, protocol,
                                 crop=transform.crop_size or (769, 769))
    elapsed = time.perf_counter() - start
    summary = {"num_images": len(dataset), "elapsed_s": elapsed, "images_per_s": len(dataset) / elapsed,
               "threads": torch.get_num_threads(), "miou": results["pred"]["miou"],
               "miou_proto": results["proto"]["miou"] if "proto" in results else None}
    print(json.dumps(summary))
    if args.json:
        from ms_semiseg.utils.atomic import write_text_atomic
        write_text_atomic(args.json, json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    from ms_semiseg.cli import run_cli
    sys.exit(run_cli(_run))
