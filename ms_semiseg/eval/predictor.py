"""The MindSpore `predict` callable that the evaluation protocols drive, and how the network gets compiled.

`Predictor(model)(x)` takes a float32 (1, 3, h, w) numpy image and returns {'pred': logits, 'proto': logits}
(numpy, (1, C, h, w), at the input size; 'proto' only when the model has a prototype head).

Compile strategy (`--strategy`). Every strategy computes the same numbers (bit-identical logits, checked in
tests/test_eval.py); they differ only in speed and memory. Measured with ResNet-101 DeepLabv3+ and its
prototype head at 375x500 on a shared 2-core CPU (steady state per forward; the first forward at a new shape
also pays for kernel set-up, in every strategy and in PyTorch):

| strategy | time per forward | compile | memory |
|---|---|---|---|
| `static` (default): `ms.jit`, one graph per exact input shape | 1.0 (4.5 s at low load) | ~5-12 s per new shape | ~2 GB per kept shape |
| dynamic-shape graph (`set_inputs` with H, W = None) | 1.3 | ~50 s, once | flat |
| `pynative`: op by op | 1.4-2.2 | none | flat |
| `auto`: per size, a graph where it pays back (below), else op by op | between | only where it pays | as static |

`auto` chooses per input size: a compiled graph where its compile pays back, op by op elsewhere. The evaluator
tells it (`expect`) how many forwards each size will get; a size runs as a graph when forwards x h x w >=
AUTO_STATIC_PIXELS (400k), i.e. about 2.6 forwards at 375x500. Break-even measured with 1 thread on a shared
AMD EPYC (AVX-512, oneDNN capped at AVX2), ResNet-101 DeepLabv3+ at 375x500: graph 12 s compile (first call 22.6
s) + 10.4 s per forward, op by op 15 s per forward, so the graph wins from 12 / 4.6 = 2.6 forwards (490k
pixel-forwards); ResNet-18 at 166x250: 8.3 s compile, 1.2 vs 2.1 s per forward, 9 forwards (360k). VOC val has
hundreds of sizes, most of them with one or two images: those now skip the compile (bench/eval_speed.py --mix many).
Both paths give bit-identical logits on CPU (tests/test_eval.py checks auto against static).

`static` stays the default. Its two costs are handled by the caller's order and a bounded cache (auto's graphs too):
- the evaluation visits images grouped by size (the dataset mIoU is a sum of per-image counts, so order does
  not change it), so each distinct size is compiled once;
- at most `max_cached_shapes` compiled shapes are kept (default: the number of shapes one image needs, i.e. its
  scales); a new shape beyond that drops all compiled graphs first (`mindspore.ms_memory_recycle`, which is
  process-wide), so memory stays bounded over hundreds of VOC sizes. Sliding-window and centre-crop protocols
  feed one window size only, so they compile once and never recycle.
The dynamic-shape graph was rejected: it is 1.3x slower per image than a static graph on CPU, and the model
needs changes to compile with dynamic H, W (`ops.interpolate` checks `size` as a constant, `broadcast_to`
cannot take dynamic dims). Padding images to a few bucket sizes was rejected: zero padding changes every logit
(ASPP's image pooling averages the padding in, and convolutions see it at the borders), so results would differ
from the upstream protocol.

CPU kernels: importing ms_semiseg caps oneDNN at AVX2 (see ms_semiseg/__init__.py); without it, MindSpore's
NCHW convolutions run a reference kernel on AVX-512 CPUs and every number above is ~100x worse. With that cap a
steady graph forward (ResNet-101, 375x500, 1 thread) matches PyTorch eager's, convolutions included; what MindSpore
pays more is the compile per shape and memory (`bench/profile_ops.py --eval`, docs/performance.md "Evaluation
forward, operator by operator"; whole evaluations: bench/eval_speed.py).
"""
import time

import numpy as np

STRATEGIES = ("static", "pynative", "auto")
AUTO_STATIC_PIXELS = 400_000  # auto: a graph for an input size whose forwards x pixels reach this (see above)


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
    if threads:
        set_cpu_threads(threads)
    return device


def release_pooling_line(ckpt_path, stem_pool):
    """One line for a checkpoint in the original PCR MindSpore release's layout: which stem max-pool this run uses
    and how to switch (the release's published numbers come from pad_mode='same', the paper's from PyTorch's)."""
    where = f"{ckpt_path}: `module.` names, the layout of the original PCR MindSpore release"
    if stem_pool == "same":
        return (f"note: {where}; stem max-pool pad_mode='same' as the release (its \"Ours (this repo.)\" numbers); "
                "for PyTorch's padding=1, ceil_mode=True (the paper's numbers) drop net.encoder.kwargs.stem_pool")
    return (f"note: {where}; stem max-pool padding=1, ceil_mode=True as PyTorch (the paper's numbers); for the "
            "release's own numbers add --opts net.encoder.kwargs.stem_pool=same")


def load_model(cfg, ckpt_path, say=print, weights=None):
    """The config's network with the checkpoint's weights, in eval mode (refuses partial loads, see load_into_model).
    For a checkpoint in the original release's layout, `say` gets one line naming the stem max-pool in use.
    `weights` ("teacher" / "student") picks a model out of a training state (last.ckpt), see select_model."""
    from ms_semiseg.config import net_config
    from ms_semiseg.models import create_model
    from ms_semiseg.utils.checkpoint import load_with_report, read_checkpoint, select_model
    params = select_model(read_checkpoint(ckpt_path), weights, ckpt_path)  # before the model: bad input fails fast
    model = create_model(net_config(cfg))
    report = load_with_report(model, ckpt_path, params, say)
    if report.release_layout:
        say(release_pooling_line(ckpt_path, model.encoder.stem_pool))
    model.set_train(False)
    return model


class Predictor:
    """`predict(x)` for the protocols: numpy (1, 3, h, w) float32 -> {'pred': ..., 'proto': ...} numpy logits.

    `expect(calls)` tells an `auto` predictor how many forwards each input size (h, w) will get; a size whose
    forwards x h x w reach `static_pixels` runs as a compiled graph, the others op by op (as does a size it was not
    told of).
    `stats()` says what ran how: graph compiles, op-by-op calls, and the seconds spent in first calls at a new
    graph shape beyond a steady call at that size (the compile share of the run, estimated)."""

    def __init__(self, model, strategy="static", max_cached_shapes=1, static_pixels=AUTO_STATIC_PIXELS):
        import mindspore as ms
        from ms_semiseg.models import SegmentationInference
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r}: expected one of {STRATEGIES}")
        model.set_train(False)
        self.network = SegmentationInference(model)
        self.network.set_train(False)
        self.strategy = strategy
        self.max_cached_shapes = max(1, int(max_cached_shapes))
        self.static_pixels = int(static_pixels)
        self.expected_calls = {}  # {(h, w): forwards}, for auto
        self._remaining = {}  # expected forwards not yet made, per size
        self.compiled_shapes = []  # shapes compiled since the last recycle, in order
        self.compile_count = 0
        self.pynative_calls = 0
        self._graph = None if strategy == "pynative" else ms.jit(self.network)
        self._first_calls = []  # (seconds, pixels) of graph calls at a newly compiled shape
        self._steady = []  # (seconds, pixels) of the other graph calls

    def expect(self, calls):
        """{(h, w): number of forwards at that input size} of the coming evaluation (used by `auto`)."""
        self.expected_calls = {tuple(size): int(count) for size, count in calls.items()}
        self._remaining = dict(self.expected_calls)

    def uses_graph(self, size):
        """Whether a forward at input size (h, w) runs the compiled graph."""
        if self.strategy != "auto":
            return self.strategy == "static"
        height, width = size
        return self.expected_calls.get((height, width), 0) * height * width >= self.static_pixels

    def _before_static_call(self, shape):
        """Recycles all compiled graphs when a new shape would exceed the cache (see the module docstring);
        returns whether this shape is compiled now."""
        import mindspore as ms
        if shape in self.compiled_shapes:
            return False
        if len(self.compiled_shapes) >= self.max_cached_shapes:
            ms.ms_memory_recycle()
            self.compiled_shapes = []
        self.compiled_shapes.append(shape)
        self.compile_count += 1
        return True

    def _release_finished_graphs(self):
        """Before an op-by-op forward: drops the compiled graphs once no expected forward needs them any more
        (a kept graph's memory would add to the op-by-op forward's: measured 3.9 -> 6.1 GB peak RSS with
        ResNet-18 at 375x500)."""
        import mindspore as ms
        if self.compiled_shapes and all(self._remaining.get(shape[2:], 0) <= 0 for shape in self.compiled_shapes):
            ms.ms_memory_recycle()
            self.compiled_shapes = []

    def __call__(self, batch):
        import mindspore as ms
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        size = batch.shape[2:]
        if size in self._remaining:
            self._remaining[size] -= 1
        if not self.uses_graph(size):
            self._release_finished_graphs()
            self.pynative_calls += 1
            return self._outputs(*self.network(ms.Tensor(batch)))
        new_shape = self._before_static_call(batch.shape)
        start = time.perf_counter()
        outputs = self._outputs(*self._graph(ms.Tensor(batch)))
        (self._first_calls if new_shape else self._steady).append((time.perf_counter() - start, batch[0, 0].size))
        return outputs

    @staticmethod
    def _outputs(pred, proto):
        outputs = {"pred": pred.asnumpy()}
        if proto is not None:
            outputs["proto"] = proto.asnumpy()
        return outputs

    def stats(self):
        """{'compiles', 'pynative_calls', 'graph_calls', 'compile_s_est'}: compile_s_est sums, over compiled shapes,
        the first call's time minus a steady graph call of that many pixels (the median seconds per pixel of the
        other graph calls; without any, the first calls count whole)."""
        rates = sorted(seconds / pixels for seconds, pixels in self._steady)
        rate = rates[len(rates) // 2] if rates else 0.0
        compile_s = sum(max(0.0, seconds - rate * pixels) for seconds, pixels in self._first_calls)
        return {"compiles": self.compile_count, "pynative_calls": self.pynative_calls,
                "graph_calls": len(self._first_calls) + len(self._steady), "compile_s_est": round(compile_s, 3)}
