"""`python -m ms_semiseg export`: the inference network as a MindIR file (MindSpore Lite, `mindspore.load`) or an ONNX
file (onnxruntime, TensorRT, ...), written by MindSpore's own `mindspore.export`.

The graph takes a float32 (1, 3, H, W) image, normalised with the config's dataset.mean/std, at the fixed size
--height x --width (default: the config's dataset.val.crop.size), and returns logits at that size: `pred` (linear
head) and, when the model has a prototype head, `proto` (`--head linear|proto` keeps one). Load a MindIR file with
`mindspore.nn.GraphCell(mindspore.load(path))`, an ONNX file with `onnxruntime.InferenceSession(path)`.

ONNX: MindSpore 2.10's ONNX exporter cannot write two operators of the model, so the exported ONNX network is built
from equivalent formulations (the MindSpore model used by eval/infer/MindIR is untouched):
- the stem's PyTorch-style max-pool (padding=1, ceil_mode=True; MindSpore runs it as MaxPool3DWithArgmax) becomes an
  explicit -inf pad + unpadded max-pool (`CeilMaxPool3x3s2`: the same values bit for bit);
- bilinear resizing with align_corners=True (ResizeBilinearV2, "not support for exporting onnx") becomes two matrix
  products with the interpolation weights (`MatrixBilinearResize`; float32 rounding of the weights only).
The ONNX graph's input is named `image`, its outputs `pred` and `proto` (or the one kept by --head).
The sizes of these weights follow from the input size, so an ONNX file, like a MindIR file, serves one input size:
export one file per size. `tests/test_onnx.py` runs the file in onnxruntime against the MindSpore logits.
"""
import os

import numpy as np

from ms_semiseg.errors import UserError

FORMATS = {"mindir": ".mindir", "onnx": ".onnx"}
HEADS = ("both", "linear", "proto")


def add_arguments(parser):
    parser.add_argument("--config", required=True, help="experiment config.yaml")
    parser.add_argument("--ckpt", required=True, help="MindSpore checkpoint, .ckpt or .safetensors")
    parser.add_argument("--out", required=True, help="output file (.mindir or .onnx is appended when missing)")
    parser.add_argument("--format", default=None, metavar="{mindir,onnx}",
                        help="file format (default: onnx when --out ends with .onnx, else mindir)")
    parser.add_argument("--head", default="both", metavar="{both,linear,proto}",
                        help="outputs: both heads (pred, proto; pred alone without a prototype head), or one")
    parser.add_argument("--height", type=int, default=None, help="input height (default: dataset.val.crop.size)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: dataset.val.crop.size)")
    parser.add_argument("--device", default=None, help="CPU or GPU (default: GPU when MindSpore can use one)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")


def export_format(args):
    """'mindir' or 'onnx' from --format, else from the --out suffix."""
    if args.format is None:
        return "onnx" if args.out.lower().endswith(FORMATS["onnx"]) else "mindir"
    fmt = args.format.lower()
    if fmt not in FORMATS:
        raise UserError(f"--format {args.format}: unknown export format, expected one of {', '.join(FORMATS)}")
    return fmt


def check_head(head, model, config_path):
    if head not in HEADS:
        raise UserError(f"--head {head}: unknown head, expected one of {', '.join(HEADS)}")
    if head == "proto" and not model.use_proto:
        raise UserError(f"--head proto: {config_path} has no net.proto_head, expected --head linear or both")


def output_names(model, head="both"):
    if head == "both":
        return ("pred", "proto") if model.use_proto else ("pred",)
    return ("pred",) if head == "linear" else ("proto",)


def export_network(model, head="both"):
    """The inference network returning (pred, proto), or one of them (`head`; pred alone without a prototype head)."""
    from mindspore import nn
    from ms_semiseg.models import SegmentationInference
    names = output_names(model, head)

    class ExportNetwork(nn.Cell):
        def __init__(self):
            super().__init__()
            self.inference = SegmentationInference(model)
            self.with_proto = "proto" in names
            self.with_pred = "pred" in names

        def construct(self, x):
            pred, proto = self.inference(x)
            if self.with_proto and self.with_pred:
                return pred, proto
            if self.with_proto:
                return proto
            return pred

    network = ExportNetwork()
    network.outputs = names
    network.set_train(False)
    return network


def bilinear_matrix(size_in, size_out):
    """(size_out, size_in) weights of 1-D linear interpolation with align_corners=True (float64 -> float32)."""
    weights = np.zeros((size_out, size_in), np.float64)
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    for i in range(size_out):
        src = i * scale
        low = min(int(np.floor(src)), size_in - 1)
        high = min(low + 1, size_in - 1)
        frac = src - low
        weights[i, low] += 1.0 - frac
        weights[i, high] += frac
    return weights.astype(np.float32)


def matrix_resize_cell(size_in, size_out):
    """A Cell resizing (B, C, *size_in) -> (B, C, *size_out) like `layers.resize_bilinear` (align_corners=True), as
    rows @ x @ cols: MatMul exports to ONNX where ResizeBilinearV2 does not."""
    import mindspore as ms
    from mindspore import nn, ops

    class MatrixBilinearResize(nn.Cell):
        def __init__(self):
            super().__init__()
            self.rows = ms.Tensor(bilinear_matrix(size_in[0], size_out[0]))          # (H_out, H_in)
            self.cols = ms.Tensor(bilinear_matrix(size_in[1], size_out[1]).T.copy())  # (W_in, W_out)
            self.size_out = tuple(size_out)

        def construct(self, x):
            b, c, h, w = x.shape
            x = ops.matmul(x.reshape(b * c * h, w), self.cols)                        # (B*C*H_in, W_out)
            x = x.reshape(b * c, h, self.size_out[1])
            x = ops.matmul(ops.broadcast_to(self.rows, (b * c,) + self.rows.shape), x)  # (B*C, H_out, W_out)
            return x.reshape(b, c, self.size_out[0], self.size_out[1])

    return MatrixBilinearResize()


def onnx_network(model, height, width, head="both"):
    """The inference network of `export_network` with the formulations MindSpore's ONNX exporter can write (see the
    module doc), for (1, 3, height, width) inputs. Same heads and outputs; `model` gets the ONNX-ready stem pool."""
    import mindspore as ms
    from mindspore import nn, ops
    from ms_semiseg.models.layers import CeilMaxPool3x3s2
    names = output_names(model, head)
    encoder = model.encoder
    if encoder.stem_pool == "pytorch":
        encoder.maxpool = CeilMaxPool3x3s2()  # no parameters: the same weights, the same values
    low, _, _, high = encoder(ms.Tensor(np.zeros((1, 3, height, width), np.float32)))  # the feature sizes
    low_size, high_size = tuple(low.shape[2:]), tuple(high.shape[2:])

    class OnnxNetwork(nn.Cell):
        """ModelBuilder.construct + DeepLabV3PlusDecoder.construct + inference_heads with matrix resizes."""

        def __init__(self):
            super().__init__()
            self.model = model
            self.with_pred, self.with_proto = "pred" in names, "proto" in names
            self.up_aspp = matrix_resize_cell(high_size, low_size)
            self.up_out = matrix_resize_cell(low_size, (height, width))

        def construct(self, x):
            x1, _, _, x4 = self.model.encoder(x)
            dec = self.model.decoder
            feat = ops.cat((dec.low_conv(x1), self.up_aspp(dec.head(dec.aspp(x4)))), 1)
            if not self.with_proto:
                return self.up_out(dec.classifier(feat))
            proto, _ = self.model.proto_net.dense(self.up_out(feat))
            if not self.with_pred:
                return proto
            return self.up_out(dec.classifier(feat)), proto

    network = OnnxNetwork()
    network.outputs = names
    network.set_train(False)
    return network


def export_onnx(network, example, path):
    """MindSpore's ONNX export: `mindspore.onnx.export` (input `image`, outputs named by head), or on versions without
    it `mindspore.export(file_format="ONNX")` (which MindSpore 2.10 deprecates in favour of the former)."""
    import mindspore as ms
    try:
        from mindspore.onnx import export
    except ImportError:
        ms.export(network, example, file_name=path, file_format="ONNX")
        return
    export(network, example, file_name=path, input_names=["image"])


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


def check_output_folder(path):
    """One line when the output's folder cannot be created or written (its nearest existing ancestor decides);
    nothing is created here."""
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{folder}: cannot create the output folder ({existing} is a file), expected a writable path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{folder}: the output folder is not writable, expected a folder you can write to")


def output_path(path, fmt):
    suffix = FORMATS[fmt]
    return path if path.lower().endswith(suffix) else path + suffix


def mindir_path(path):
    return output_path(path, "mindir")


def run(args):
    import mindspore as ms
    from ms_semiseg.config import load_config
    from ms_semiseg.eval.predictor import load_model, prepare_device
    from ms_semiseg.utils.atomic import atomic_target

    fmt = export_format(args)
    if args.head not in HEADS:
        raise UserError(f"--head {args.head}: unknown head, expected one of {', '.join(HEADS)}")
    out = output_path(args.out, fmt)
    check_output_folder(out)  # before the model is built; atomic_target creates the folder after the export
    cfg = load_config(args.config, args.opts)
    prepare_device(args.device)
    height, width = input_size(args, cfg)
    model = load_model(cfg, args.ckpt)
    check_head(args.head, model, args.config)
    if fmt == "onnx":
        network = onnx_network(model, height, width, args.head)
    else:
        network = export_network(model, args.head)
    example = ms.Tensor(np.zeros((1, 3, height, width), dtype=np.float32))
    with atomic_target(out, suffix=FORMATS[fmt]) as tmp:
        if fmt == "onnx":
            export_onnx(network, example, tmp)
        else:
            ms.export(network, example, file_name=tmp, file_format="MINDIR")
    name = "ONNX" if fmt == "onnx" else "MindIR"
    print(f"{name} -> {os.path.abspath(out)} (input 1x3x{height}x{width} float32; outputs: "
          f"{', '.join(network.outputs)})")
    return 0
