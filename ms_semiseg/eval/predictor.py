"""The MindSpore `predict` callable that the evaluation protocols drive, and how the network gets compiled.

`Predictor(model)(x)` takes a float32 (1, 3, h, w) numpy image and returns {'pred': logits, 'proto': logits}
(numpy, (1, C, h, w), at the input size; 'proto' only when the model has a prototype head).

Compile strategy (`--strategy`). Every strategy computes the same numbers (bit-identical logits, checked in
tests/test_eval.py); they differ only in speed and memory. Measured on this 2-core CPU with ResNet-101
DeepLabv3+ and its prototype head at 375x500 (seconds per forward, steady state; the machine was shared, so
the ratios matter more than the absolute values):

| strategy | per image | compile | memory |
|---|---|---|---|
| `static` (default): `ms.jit`, one graph per exact input shape | 8.9 | 7-17 s per new shape | ~2 GB per cached shape |
| dynamic-shape graph (`set_inputs` with H, W = None) | 11.4 | ~50 s, once | flat |
| `pynative`: op by op | 14-17 | none | flat |
| PyTorch eager (reference) | 14-17 | none | |

So `static` is the default. Its two costs are handled by the caller's order and a bounded cache:
- the evaluation visits images grouped by size (the dataset mIoU is a sum of per-image counts, so order does
  not change it), so each size is compiled once; VOC val has few frequent sizes;
- at most `max_cached_shapes` compiled shapes are kept (default: the number of shapes one image needs, i.e. its
  scales); a new shape beyond that drops all compiled graphs first (`mindspore.ms_memory_recycle`, which is
  process-wide), so memory stays bounded over hundreds of VOC sizes. Sliding-window and centre-crop protocols
  feed one window size only, so they compile once and never recycle.
The dynamic-shape graph was rejected: it is 1.3x slower per image than a static graph on CPU, and the model
needs changes to compile with dynamic H, W (`ops.interpolate` checks `size` as a constant, `broadcast_to`
cannot take dynamic dims). Padding images to a few bucket sizes was rejected: zero padding changes every logit
(ASPP's image pooling averages the padding in, and convolutions see it at the borders), so results would differ
from the upstream protocol.

CPU kernels: on CPUs with AVX-512, oneDNN 3.10 (inside MindSpore 2.10) runs MindSpore's NCHW convolutions
with a reference kernel (`jit_uni_ncsp:conv+ref:any`), about 100x slower than its AVX2 GEMM kernel
(5 s vs 35 ms for a 64->64 3x3 conv at 129x129). `use_fast_cpu_convolutions` caps oneDNN at AVX2 unless the
user set ONEDNN_MAX_CPU_ISA; it must run before the process's first convolution.
"""
import os

import numpy as np

STRATEGIES = ("static", "pynative")
ONEDNN_ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"


def use_fast_cpu_convolutions():
    """Caps oneDNN at AVX2 (see the module docstring) unless the user chose an ISA; returns the value in force."""
    return os.environ.setdefault(ONEDNN_ISA_VARIABLE, "AVX2")


def set_cpu_threads(threads):
    """MindSpore's CPU kernel thread count (the equivalent of torch.set_num_threads)."""
    import mindspore as ms
    ms.device_context.cpu.op_tuning.threads_num(int(threads))


def prepare_device(device=None, threads=None):
    """Selects the device (default: GPU when usable, else CPU) and the CPU kernel settings; returns the device."""
    from ms_semiseg.device import set_device
    from ms_semiseg.errors import UserError
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: expected a positive number of CPU threads")
    device = set_device(device)
    if device == "CPU":
        use_fast_cpu_convolutions()
    if threads:
        set_cpu_threads(threads)
    return device


def load_model(cfg, ckpt_path):
    """The config's network with the checkpoint's weights, in eval mode (refuses partial loads, see load_into_model)."""
    from ms_semiseg.config import net_config
    from ms_semiseg.models import create_model
    from ms_semiseg.utils.checkpoint import load_into_model, read_checkpoint
    params = read_checkpoint(ckpt_path)  # before building the model: a bad path fails fast
    model = create_model(net_config(cfg))
    load_into_model(model, ckpt_path, params)
    model.set_train(False)
    return model


class Predictor:
    """`predict(x)` for the protocols: numpy (1, 3, h, w) float32 -> {'pred': ..., 'proto': ...} numpy logits."""

    def __init__(self, model, strategy="static", max_cached_shapes=1):
        import mindspore as ms
        from ms_semiseg.models import SegmentationInference
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r}: expected one of {STRATEGIES}")
        model.set_train(False)
        self.network = SegmentationInference(model)
        self.network.set_train(False)
        self.strategy = strategy
        self.max_cached_shapes = max(1, int(max_cached_shapes))
        self.compiled_shapes = []  # shapes compiled since the last recycle, in order
        self.compile_count = 0
        self._run = ms.jit(self.network) if strategy == "static" else self.network

    def _before_static_call(self, shape):
        """Recycles all compiled graphs when a new shape would exceed the cache (see the module docstring)."""
        import mindspore as ms
        if shape in self.compiled_shapes:
            return
        if len(self.compiled_shapes) >= self.max_cached_shapes:
            ms.ms_memory_recycle()
            self.compiled_shapes = []
        self.compiled_shapes.append(shape)
        self.compile_count += 1

    def __call__(self, batch):
        import mindspore as ms
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.strategy == "static":
            self._before_static_call(batch.shape)
        pred, proto = self._run(ms.Tensor(batch))
        outputs = {"pred": pred.asnumpy()}
        if proto is not None:
            outputs["proto"] = proto.asnumpy()
        return outputs
