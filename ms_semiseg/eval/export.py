"""`python -m ms_semiseg export`: the network as a MindIR file for deployment (MindSpore Lite, `mindspore.load`).

The graph takes a float32 (1, 3, H, W) image, normalised with the config's dataset.mean/std, at the fixed size
--height x --width (default: the config's dataset.val.crop.size), and returns logits at that size: `pred` (linear
head) and, when the model has a prototype head, `proto`. Load it with
`mindspore.nn.GraphCell(mindspore.load(path))`.
"""
import os

from ms_semiseg.errors import UserError

MINDIR_SUFFIX = ".mindir"


def add_arguments(parser):
    parser.add_argument("--config", required=True, help="experiment config.yaml")
    parser.add_argument("--ckpt", required=True, help="MindSpore checkpoint, .ckpt or .safetensors")
    parser.add_argument("--out", required=True, help="output file (.mindir is appended when missing)")
    parser.add_argument("--height", type=int, default=None, help="input height (default: dataset.val.crop.size)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: dataset.val.crop.size)")
    parser.add_argument("--device", default=None, help="CPU or GPU (default: GPU when MindSpore can use one)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")


def export_network(model):
    """The inference network returning (pred, proto), or pred alone when the model has no prototype head."""
    from mindspore import nn
    from ms_semiseg.models import SegmentationInference

    class ExportNetwork(nn.Cell):
        def __init__(self):
            super().__init__()
            self.inference = SegmentationInference(model)
            self.with_proto = bool(model.use_proto)

        def construct(self, x):
            pred, proto = self.inference(x)
            if self.with_proto:
                return pred, proto
            return pred

    network = ExportNetwork()
    network.set_train(False)
    return network


def input_size(args, cfg):
    """(height, width) from the arguments, else the config's val crop."""
    from ms_semiseg.data import build_transform
    from ms_semiseg.eval.evaluate import resolved_dataset_config
    crop = None
    if args.height is None or args.width is None:
        crop = build_transform(resolved_dataset_config(cfg), "val").crop_size
        if crop is None:
            raise UserError(f"{args.config}: no dataset.val.crop.size to take the input size from, expected "
                            "--height and --width")
    height = args.height if args.height is not None else crop[0]
    width = args.width if args.width is not None else crop[1]
    if height < 1 or width < 1:
        raise UserError(f"--height {height} --width {width}: expected a positive input size")
    return height, width


def mindir_path(path):
    return path if path.lower().endswith(MINDIR_SUFFIX) else path + MINDIR_SUFFIX


def run(args):
    import mindspore as ms
    import numpy as np
    from ms_semiseg.config import load_config
    from ms_semiseg.eval.predictor import load_model, prepare_device
    from ms_semiseg.utils.atomic import atomic_target

    cfg = load_config(args.config, args.opts)
    prepare_device(args.device)
    height, width = input_size(args, cfg)
    network = export_network(load_model(cfg, args.ckpt))
    out = mindir_path(args.out)
    example = ms.Tensor(np.zeros((1, 3, height, width), dtype=np.float32))
    with atomic_target(out, suffix=MINDIR_SUFFIX) as tmp:
        ms.export(network, example, file_name=tmp, file_format="MINDIR")
    outputs = "pred, proto" if network.with_proto else "pred"
    print(f"MindIR -> {os.path.abspath(out)} (input 1x3x{height}x{width} float32; outputs: {outputs})")
    return 0
