"""The models of a run: the student (and the mean teacher's copy) with host-side dropout, loaded from a pretrained
checkpoint, frozen BatchNorm when asked, and identical on every data-parallel replica."""
import mindspore as ms
from mindspore import Tensor

from ..models import create_model
from ..utils.checkpoint import compare_to_model, model_shapes, read_checkpoint, strip_prefix
from ..engine.distributed import broadcast_parameters, freeze_batch_norm, use_sync_bn
from ..engine.ema import ema_parameter_pairs
from ..engine.masks import install_host_dropout
from ..engine.console import say
from ..engine.steps import MeanTeacherPair


def encoder_stage(name):
    """'encoder.layer3.0.conv1.weight' -> 'layer3' (conv1/bn1... for the stem)."""
    return name.split(".")[1]


def load_pretrained(model, path):
    """An ImageNet backbone (`encoder.*` only, from `convert pth2ckpt`) or a whole segmentor checkpoint; the
    prototype bank may be missing from the latter (it is initialised at the first semi-supervised epoch). A
    backbone may leave out whole stages (the demo's pretrained stem..layer3, kept under 20 MB): those start from
    random weights, with a note; every stage it has must be complete."""
    params = strip_prefix(read_checkpoint(path))
    shapes = model_shapes(model)
    if all(name.startswith("encoder.") for name in params):
        shapes = {k: v for k, v in shapes.items() if k.startswith("encoder.")}
        stages, model_stages = {encoder_stage(n) for n in params}, {encoder_stage(k) for k in shapes}
        left_out = sorted(model_stages - stages)
        if left_out and stages & model_stages:
            say(f"note: {path} has no weights for encoder stage(s) {', '.join(left_out)}: they start from random "
                f"weights")
            shapes = {k: v for k, v in shapes.items() if encoder_stage(k) in stages}
    elif not any(name.startswith("proto_net.") for name in params):
        shapes = {k: v for k, v in shapes.items() if not k.startswith("proto_net.")}
    compare_to_model(params, shapes, path)
    ms.load_param_into_net(model, params, strict_load=True)
    return len(params)


def build_pair(plan, pretrained=None):
    """(MeanTeacherPair, student dropout cells, teacher dropout cells); the teacher starts as a copy."""
    net_cfg = plan.net
    sync_bn = use_sync_bn(plan.batch_norm, warn=say)
    student = create_model(net_cfg, sync_bn=sync_bn)
    if pretrained:
        load_pretrained(student, pretrained)
    max_batch = 2 * plan.batch_size if plan.semi else plan.batch_size
    student_drop = install_host_dropout(student, max_batch)
    teacher, teacher_drop = None, []
    if plan.semi:
        teacher = create_model(net_cfg, sync_bn=sync_bn)
        teacher_drop = install_host_dropout(teacher, max_batch)
    pair = MeanTeacherPair(student, teacher)
    if plan.batch_norm.freeze:
        freeze_batch_norm(pair)
    broadcast_parameters(pair)  # data parallel: every replica starts from rank 0's weights
    if teacher is not None:
        copy_parameters(*ema_pairs(pair))
    return pair, student_drop, teacher_drop


def ema_pairs(pair):
    return ema_parameter_pairs(pair.student, pair.teacher)


def copy_parameters(targets, sources):
    for target, source in zip(targets, sources):
        target.set_data(Tensor(source.asnumpy().copy()))

