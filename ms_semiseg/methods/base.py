"""The Method interface: what one training method adds to the shared trainer (`train/trainer.py`).

The trainer owns the loop, the supervised step, the mean teacher's common part (teacher pseudo-labels on the weak
view, CutMix boxes, the EMA decay, dropout masks) and the records. A method owns the rest, through these calls:

- `graphs(...)` once, after the models and the optimizer exist: the compiled graphs of its semi-supervised step
  ("semi step" (+ "semi step (accumulate)") and "teacher pseudo-labels"; `mean_teacher.py` builds them from the
  method's `semi_step` and `teacher_graph`);
- `begin_semi_phase(trainer)` before the first semi-supervised step (before teacher := student);
- per semi-supervised iteration (epoch e, iteration i): `step_inputs(e, i)` -> the semi step graph ->
  `after_step(outputs, teacher_outputs, label_l, e, i)`, which returns the loss vector;
- `checkpoint_arrays()` / `load_checkpoint_arrays(arrays, source)`: its own state in last.ckpt.
"""
from typing import Any, NamedTuple


class TeacherOutputs(NamedTuple):
    """The "teacher pseudo-labels" graph's result on the weak unlabeled view, named on the host."""
    pseudo_label: Any  # int32 (B, H, W)
    confidence: Any  # float32 (B, H, W)


class SemiInputs(NamedTuple):
    """The "semi step" graph's inputs (`MeanTeacherStep.construct`), in its order: named on the host, passed by
    position (a graph takes tensors, not a NamedTuple)."""
    image_l: Any  # float32 (B, 3, H, W)
    label_l: Any  # int32 (B, H, W)
    image_u: Any  # float32 (B, 3, H, W): the student's view (the strong one when the pipeline makes it)
    pseudo_u: Any  # TeacherOutputs.pseudo_label
    conf_u: Any  # TeacherOutputs.confidence
    boxes: Any  # int32 (B, 4) CutMix boxes, all zero: unmixed
    drop_percent: Any  # float32 scalar, entropy dropping's schedule
    ema_decay: Any  # float32 scalar
    extra: tuple = ()  # the method's own inputs (`Method.step_inputs`)

    def arguments(self):
        """The graph's positional arguments (`extra` is left out when empty: the graph's default)."""
        return tuple(self[:-1]) + ((self.extra,) if len(self.extra) else ())


def step_graphs(name, make, accumulation):
    """{name: make()} and, with gradient accumulation (> 1), `name (accumulate)`: the graph of the micro-batches
    that do not end an update."""
    graphs = {name: make()}
    if accumulation > 1:
        graphs[f"{name} (accumulate)"] = make(apply_update=False)
    return graphs


class Method:
    """Defaults: no semi-supervised step, no state of its own."""
    title = ""  # the run's first line
    semi = False  # trains a mean teacher after the supervised warm-up
    proto_head = False  # PCR's prototype head: validated as a second head, its initial bank written to the run
    has_state = False  # has arrays of its own in last.ckpt (`checkpoint_arrays`)

    def __init__(self, plan, seed, student=None):
        self.plan, self.seed = plan, seed

    @classmethod
    def settings_from_config(cls, cfg, plan):
        """The method's own settings (`plan.method_settings`), validated at start-up by `plan_from_config`: a
        UserError before anything is written when the method cannot run with this config. None: it has none."""
        return None

    def stat_shapes(self, pair):
        """Shapes of the step statistics summed over accumulated micro-batches (None: none)."""
        return None

    def graphs(self, pair, optimizer, criterion, ema, sums):
        """{graph name: graph} of the semi-supervised step; `sums`: {"grads", "stats"} SumBuffers or Nones."""
        return {}

    def begin_semi_phase(self, trainer):
        """Before the first semi-supervised step; `trainer`: the run (pair, files, data_root, skipped samples)."""

    def step_inputs(self, epoch, iteration):
        """The semi step's `extra` input: the method's own per-step inputs (an `ms.mutable` tuple), or ()."""
        return ()

    def after_step(self, outputs, teacher_outputs, label_l, epoch, iteration):
        """The semi step's loss vector from its outputs (a method may use them first)."""
        return outputs

    def checkpoint_arrays(self):
        """{name: array} of the method's state for last.ckpt (None: nothing)."""
        return None

    def load_checkpoint_arrays(self, arrays, source):
        """Restores `checkpoint_arrays()` from last.ckpt."""

    def summary_lines(self, files):
        """Extra lines of the end-of-run summary (files the method wrote)."""
        return []
