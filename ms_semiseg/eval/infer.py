"""`python -m ms_semiseg infer`: segment your own images with a checkpoint.

For every image (files, or folders of .jpg/.jpeg/.png/.bmp files) it writes `<out>/<name>_mask.png` (the class
map in the dataset's palette) and `<out>/<name>_overlay.png` (the mask blended over the image, see --alpha).
The model runs with the evaluation protocol of the config's dataset (whole image for VOC, sliding windows for
Cityscapes; --protocol/--scales/--flip as in `eval`), on images of any size.
"""
import os

import numpy as np

from ms_semiseg.errors import UserError
from ms_semiseg.eval.evaluate import add_model_arguments, add_protocol_arguments

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def add_arguments(parser):
    add_model_arguments(parser)
    add_protocol_arguments(parser, protocols=("whole", "sliding"))
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders")
    parser.add_argument("--out", required=True, help="output folder for masks and overlays")
    parser.add_argument("--head", choices=("linear", "proto"), default="linear", help="which head's prediction")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlay (0..1)")


def collect_images(paths):
    """Image files named on the command line, folders expanded (sorted, not recursive)."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            inside = sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.lower().endswith(IMAGE_EXTENSIONS))
            if not inside:
                raise UserError(f"{path}: no images in this folder, expected files ending in "
                                f"{', '.join(IMAGE_EXTENSIONS)}")
            found += inside
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise UserError(f"{path}: no such file or folder, expected an image or a folder of images")
    return found


def output_stems(paths):
    """File stems for the outputs; a stem seen before gets a numeric suffix so no output is overwritten."""
    stems, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def overlay(image, mask, alpha):
    """RGB uint8 blend: (1 - alpha) * image + alpha * mask."""
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * mask.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def run(args):
    from ms_semiseg.config import load_config
    from ms_semiseg.data import build_transform, colorize, dataset_kind, normalize, read_image
    from ms_semiseg.data.datasets import palette_for_config
    from ms_semiseg.data import save_png_atomic
    from ms_semiseg.eval import to_class_map
    from ms_semiseg.eval.evaluate import planned_order, progress_bar, protocol_from_args, resolved_dataset_config
    from ms_semiseg.eval.predictor import Predictor, load_model, prepare_device
    from ms_semiseg.utils.atomic import ensure_writable_dir

    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha {args.alpha}: expected a mask opacity between 0 and 1")
    cfg = load_config(args.config, args.opts)
    prepare_device(args.device, args.threads)
    dataset_cfg = resolved_dataset_config(cfg)
    kind = dataset_kind(dataset_cfg)
    transform = build_transform(dataset_cfg, "val")
    protocol = protocol_from_args(args, transform, kind)
    paths = collect_images(args.images)
    stems = output_stems(paths)
    ensure_writable_dir(args.out, "--out folder")
    model = load_model(cfg, args.ckpt, weights=args.weights)
    if args.head == "proto" and not model.use_proto:
        raise UserError(f"--head proto: {args.config} has no net.proto_head, expected --head linear")
    head = "proto" if args.head == "proto" else "pred"
    predictor = Predictor(model, args.strategy, max_cached_shapes=protocol.shapes_per_image)
    palette = palette_for_config(cfg)
    for index in progress_bar(planned_order(paths, predictor, protocol), len(paths), True, desc="infer"):
        image = read_image(paths[index])
        logits, _ = protocol.logits(predictor, normalize(image, transform.mean, transform.std))
        mask = colorize(to_class_map(logits[head]), palette)
        save_png_atomic(os.path.join(args.out, f"{stems[index]}_mask.png"), mask)
        save_png_atomic(os.path.join(args.out, f"{stems[index]}_overlay.png"), overlay(image, mask, args.alpha))
    print(f"{len(paths)} image(s): masks and overlays -> {os.path.abspath(args.out)}")
    return 0
