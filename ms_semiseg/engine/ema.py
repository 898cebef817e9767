"""Mean teacher (spec B.6 step 10, C.5): which parameters the teacher follows, the ramped decay, the update.

The teacher follows the student's trainable parameters and the prototype bank (a non-trainable Parameter that a
torch nn.Parameter bank would carry through `.parameters()`), never the BatchNorm statistics: the teacher keeps its
own, refreshed by its train-mode forwards. Dropout keep masks are per-step inputs, not state.
"""
from mindspore import ParameterTuple, nn, ops

from .masks import is_dropout_mask

PROTO_BANK_SUFFIX = "proto_net.proto_list"


def ema_decay(iteration, warmup_iterations, max_decay):
    """U2PL: min(1 - 1 / (i - warmup + 1), ema_decay); 0 at the first semi-supervised iteration (teacher := student)."""
    return min(1.0 - 1.0 / (iteration - warmup_iterations + 1), max_decay)


def follows_student(param):
    return param.requires_grad or param.name.endswith(PROTO_BANK_SUFFIX)


def _local_name(name, prefix):
    if not name.startswith(prefix):
        raise ValueError(f"parameter {name!r} does not start with {prefix!r}")
    return name[len(prefix):]


def ema_parameter_pairs(student, teacher, student_prefix="student.", teacher_prefix="teacher."):
    """(teacher ParameterTuple, student ParameterTuple) of the followed parameters, matched by name."""
    students = {_local_name(p.name, student_prefix): p for p in student.get_parameters()
                if follows_student(p) and not is_dropout_mask(p.name)}
    teachers = {_local_name(p.name, teacher_prefix): p for p in teacher.get_parameters()}
    missing = sorted(set(students) - set(teachers))
    if missing:
        raise ValueError(f"teacher lacks parameters {missing[:5]}")
    names = sorted(students)
    return ParameterTuple([teachers[n] for n in names]), ParameterTuple([students[n] for n in names])


class EMAUpdate(nn.Cell):
    """teacher <- d * teacher + (1 - d) * student over the followed parameters; callable inside a train step graph
    (`decay` a float32 scalar tensor) or on its own (decay 0 copies the student into the teacher)."""

    def __init__(self, teacher_params, student_params):
        super().__init__()
        self.teacher_params = teacher_params
        self.student_params = student_params

    def construct(self, decay):
        for target, source in zip(self.teacher_params, self.student_params):
            ops.assign(target, decay * target + (1.0 - decay) * source)
        return decay
