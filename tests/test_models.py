"""Model port: names and counts against the PyTorch layout, dilations, torch-equivalent init, and the operators
whose MindSpore defaults differ from PyTorch (max-pool padding, BatchNorm momentum, Dropout2d, L2 normalisation).

Numeric comparisons (marked `numeric`) hold MindSpore to the float32 floor of the reference (its distance from the
same computation in float64, helpers.assert_float32_close) and check an argmax only where its margin is decisive."""
import math

import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convert import mapping
from convert.torch_model import TorchModelBuilder
from ms_semiseg.errors import UserError
from ms_semiseg.models import create_model
from ms_semiseg.models.layers import batch_norm, dropout2d, l2_normalize, max_pool_3x3_s2
from ms_semiseg.models.proto_head import CosineProtoHead
from tests.helpers import (CITY_CONFIG, VOC_CONFIG, assert_float32_close, assert_well_posed, float32_tol,
                           load_yaml, tiny_config, top2_margin)

ms.set_device("CPU")


@pytest.fixture(scope="module", params=[(VOC_CONFIG, 696, 115, 62.62), (CITY_CONFIG, 705, 116, 64.99)],
                ids=["voc", "cityscapes"])
def model_pair(request):
    path, keys, bns, millions = request.param
    net_cfg = load_yaml(path)["net"]
    return create_model(net_cfg), TorchModelBuilder(net_cfg), keys, bns, millions


def test_state_dict_counts_match_upstream(model_pair):
    net, ref, keys, bns, millions = model_pair
    state = ref.state_dict()
    assert len(state) == keys
    assert sum(k.endswith("num_batches_tracked") for k in state) == bns
    trainable = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert round(trainable / 1e6, 2) == millions
    assert len(list(net.get_parameters())) == keys - bns


def test_names_and_shapes_are_the_torch_ones_up_to_bn_leaves(model_pair):
    net, ref, *_ = model_pair
    ours = {p.name: tuple(p.shape) for p in net.get_parameters()}
    theirs = {k: tuple(v.shape) for k, v in mapping.torch_to_ms(ref.state_dict()).items()}
    assert ours == theirs
    assert "proto_net.proto_list" in ours and "decoder.classifier.8.bias" in ours


def test_resnet101_dilations_follow_multi_grid(model_pair):
    net, *_ = model_pair
    layer3 = [blk.conv2.dilation for blk in net.encoder.layer3]
    layer4 = [blk.conv2.dilation for blk in net.encoder.layer4]
    assert [d[0] if isinstance(d, tuple) else d for d in layer3] == [1] + [2] * 22
    assert [d[0] if isinstance(d, tuple) else d for d in layer4] == [4, 8, 16]
    assert net.encoder.layer4[0].conv2.stride[0] == 1 and net.encoder.layer2[0].conv2.stride[0] == 2


def test_unknown_encoder_kwarg_is_a_user_error():
    cfg = tiny_config()
    cfg["net"]["encoder"]["kwargs"]["multigrid"] = True
    with pytest.raises(UserError, match="net.encoder.kwargs: unknown key"):
        create_model(cfg["net"])


def test_unsupported_encoder_type_is_a_user_error():
    cfg = tiny_config(arch="resnet999")
    with pytest.raises(UserError, match="net.encoder.type"):
        create_model(cfg["net"])


def _std(param):
    return float(param.asnumpy().std())


def test_weight_init_matches_torch_statistics():
    """Encoder convs: kaiming_normal(fan_out, relu); decoder convs: torch default U(+-1/sqrt(fan_in)) for weight and
    bias; zero_init_residual zeroes the last BN scale of every block."""
    net = create_model(tiny_config(arch="resnet50")["net"])
    conv = net.encoder.layer3[1].conv2  # 256x256x3x3
    assert _std(conv.weight) == pytest.approx(math.sqrt(2.0 / (256 * 9)), rel=0.03)
    head = net.decoder.head[0]  # 1280 -> 256, 3x3, torch default init
    bound = 1.0 / math.sqrt(1280 * 9)
    w = head.weight.asnumpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    cls_bias = net.decoder.classifier[0].bias.asnumpy()
    assert np.abs(cls_bias).max() <= 1.0 / math.sqrt(512 * 9)
    assert all(float(np.abs(blk.bn3.gamma.asnumpy()).max()) == 0.0 for blk in net.encoder.layer2)
    assert float(net.encoder.bn1.gamma.asnumpy().min()) == 1.0


@pytest.mark.numeric
@pytest.mark.parametrize("size", [(64, 64), (65, 66), (250, 188), (33, 128)])
def test_max_pool_matches_torch_ceil_mode_with_padding(size):
    """Bit-equal on any machine: a max selects one of its inputs, no rounding is involved."""
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    ours = max_pool_3x3_s2()(ms.Tensor(x)).asnumpy()
    ref = F.max_pool2d(torch.from_numpy(x), 3, 2, 1, ceil_mode=True).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def _same_max_pool_reference(x):
    """MindSpore's MaxPool2d(3, 2, pad_mode='same') by hand: ceil(n/2) outputs per axis, total padding
    max((out - 1) * 2 + 3 - n, 0), the smaller half before (so an even n pads one -inf row/column at the end only)."""
    pads = []
    for n in x.shape[2:]:
        out = -(-n // 2)
        total = max((out - 1) * 2 + 3 - n, 0)
        pads.append((total // 2, total - total // 2))
    padded = np.pad(x, ((0, 0), (0, 0), *pads), constant_values=-np.inf)
    out_h, out_w = (-(-n // 2) for n in x.shape[2:])
    result = np.empty(x.shape[:2] + (out_h, out_w), x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            result[:, :, i, j] = padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(2, 3))
    return result


@pytest.mark.numeric
@pytest.mark.parametrize("size", [(64, 64), (65, 66), (250, 188), (33, 129), (7, 8)])
def test_same_stem_pool_matches_a_numpy_reference_and_the_torch_twin(size):
    """stem_pool: same (the original PCR MindSpore release) against a hand-computed reference, bit-equal (a max
    selects an input); equal to the PyTorch form exactly when both sizes are odd."""
    from convert.torch_model import SamePadMaxPool
    x = np.random.default_rng(5).standard_normal((1, 2, *size)).astype(np.float32)
    ours = max_pool_3x3_s2("same")(ms.Tensor(x)).asnumpy()
    ref = _same_max_pool_reference(x)
    assert ours.shape == ref.shape == (1, 2, (size[0] + 1) // 2, (size[1] + 1) // 2)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(SamePadMaxPool()(torch.from_numpy(x)).numpy(), ref)
    pytorch_form = max_pool_3x3_s2("pytorch")(ms.Tensor(x)).asnumpy()
    odd = size[0] % 2 == 1 and size[1] % 2 == 1
    assert (pytorch_form.shape == ref.shape and np.array_equal(pytorch_form, ref)) == odd


def test_stem_pool_setting_builds_the_release_pooling_and_refuses_other_values():
    cfg = tiny_config()
    assert create_model(cfg["net"]).encoder.stem_pool == "pytorch"
    cfg["net"]["encoder"]["kwargs"]["stem_pool"] = "same"
    net = create_model(cfg["net"])
    assert net.encoder.maxpool.pad_mode.lower() == "same"
    assert TorchModelBuilder(cfg["net"]).encoder.maxpool.__class__.__name__ == "SamePadMaxPool"
    cfg["net"]["encoder"]["kwargs"]["stem_pool"] = "ceil"
    with pytest.raises(UserError, match=r"net.encoder.kwargs.stem_pool: 'ceil', expected 'pytorch' .* or 'same'"):
        create_model(cfg["net"])


@pytest.mark.numeric
def test_batchnorm_train_step_matches_torch_momentum_and_unbiased_variance():
    x = np.random.default_rng(1).standard_normal((4, 3, 5, 5)).astype(np.float32) * 2 + 1
    bn = batch_norm(3)
    bn.set_train(True)
    y = bn(ms.Tensor(x)).asnumpy()
    ref, ref64 = torch.nn.BatchNorm2d(3).train(), torch.nn.BatchNorm2d(3).double().train()
    y_ref = ref(torch.from_numpy(x)).detach().numpy()
    y_64 = ref64(torch.from_numpy(x).double()).detach().numpy()
    assert_float32_close(y, y_ref, y_64, "output")
    assert_float32_close(bn.moving_mean.asnumpy(), ref.running_mean.numpy(), ref64.running_mean.numpy(), "mean")
    # momentum 0.1 and the unbiased variance: 0.9 + 0.1 * var * 100/99; a biased one would be off by ~4e-3
    assert_float32_close(bn.moving_variance.asnumpy(), ref.running_var.numpy(), ref64.running_var.numpy(), "var")


def test_dropout2d_drops_whole_channels_with_probability_p():
    drop = dropout2d(0.1)
    drop.set_train(True)
    y = drop(ms.Tensor(np.ones((64, 64, 3, 3), np.float32))).asnumpy()
    per_channel = y.reshape(64 * 64, 9)
    assert np.all((per_channel == 0).all(1) | np.isclose(per_channel, 1 / 0.9).all(1))
    assert 0.07 < (per_channel == 0).all(1).mean() < 0.13  # p is the drop rate, not keep_prob
    drop.set_train(False)
    np.testing.assert_array_equal(drop(ms.Tensor(np.ones((2, 3, 4, 4), np.float32))).asnumpy(), 1.0)


@pytest.mark.numeric
def test_l2_normalize_matches_torch_also_near_zero():
    x = np.random.default_rng(2).standard_normal((6, 8)).astype(np.float32)
    x[0] = 0.0
    x[1] *= 1e-7
    assert_float32_close(l2_normalize(ms.Tensor(x), 1).asnumpy(), F.normalize(torch.from_numpy(x), dim=1).numpy(),
                         F.normalize(torch.from_numpy(x).double(), dim=1).numpy())


@pytest.mark.numeric
@pytest.mark.parametrize("batch", [1, 2])
def test_proto_head_dense_scores_every_pixel_as_the_flat_head(batch):
    """`dense` (NCHW, no transpose of the feature map) gives each pixel the logits and matched index of `scores`
    on that pixel's feature vector, to float32 rounding."""
    rng = np.random.default_rng(4)
    c, k, d, h, w = 3, 4, 16, 5, 7
    head = CosineProtoHead(d, c, k, temperature=0.1)
    feat_map = rng.standard_normal((batch, d, h, w)).astype(np.float32)
    logits, index = head.dense(ms.Tensor(feat_map))
    flat_logits, flat_index = head(ms.Tensor(feat_map.transpose(0, 2, 3, 1).reshape(-1, d)))
    to_map = lambda t: t.asnumpy().reshape(batch, h, w, c).transpose(0, 3, 1, 2)  # noqa: E731
    assert logits.shape == index.shape == (batch, c, h, w)
    np.testing.assert_allclose(logits.asnumpy(), to_map(flat_logits), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(index.asnumpy(), to_map(flat_index))


@pytest.mark.numeric
def test_proto_head_logits_index_and_momentum_update_against_numpy():
    rng = np.random.default_rng(3)
    c, k, d, n = 3, 2, 5, 40
    head = CosineProtoHead(d, c, k, temperature=0.1, momentum=0.9)
    bank = rng.standard_normal((c * k, d)).astype(np.float32)
    head.proto_list.set_data(ms.Tensor(bank))
    feats = np.abs(rng.standard_normal((n, d))).astype(np.float32)
    logits, index = head(ms.Tensor(feats))

    def cosine(f, b):
        return ((f / np.linalg.norm(f, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
                ).reshape(n, c, k)

    cos, cos64 = cosine(feats, bank), cosine(feats.astype(np.float64), bank.astype(np.float64))
    assert_float32_close(logits.asnumpy(), cos.max(2) / 0.1, cos64.max(2) / 0.1, "logits")
    # the matched prototype is an argmax over k: exact where the two best cosines are further apart than rounding
    assert_well_posed(top2_margin(cos64, axis=2), 2 * float32_tol(cos, cos64), "cosine top-2 margin")
    np.testing.assert_array_equal(index.asnumpy(), cos.argmax(2))

    target = rng.integers(0, c, n)
    valid = rng.random(n) > 0.3
    sums, counts = head.update_statistics(ms.Tensor(feats), ms.Tensor(target.astype(np.int32)),
                                          ms.Tensor(valid), index)
    head.momentum_update(sums, counts)
    expected, expected64 = bank.copy(), bank.astype(np.float64)
    for slot in range(c * k):  # the loop the vectorised update replaces
        cls, micro = divmod(slot, k)
        chosen = valid & (target == cls) & (cos.argmax(2)[np.arange(n), target] == micro)
        if chosen.any():
            expected[slot] = 0.9 * bank[slot] + 0.1 * feats[chosen].mean(0)
            expected64[slot] = 0.9 * expected64[slot] + 0.1 * feats[chosen].astype(np.float64).mean(0)
    assert_float32_close(head.proto_list.asnumpy(), expected, expected64, "updated bank")


@pytest.mark.numeric
def test_graph_mode_matches_pynative_on_a_small_model():
    """Two code paths (the compiled graph may fuse and pick kernels differently): equal to the float32 floor of the
    same model, measured with its PyTorch twin in float32 against float64."""
    cfg = tiny_config()
    net = create_model(cfg["net"])
    net.set_train(False)
    x = np.random.default_rng(4).standard_normal((1, 3, 50, 62)).astype(np.float32)
    eager = net(ms.Tensor(x))
    graph = ms.jit(net.construct)(ms.Tensor(x))
    twin = TorchModelBuilder(cfg["net"])
    missing, unexpected = twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in mapping.ms_to_torch(
        {p.name: p.asnumpy() for p in net.get_parameters()}).items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    twin.eval()
    with torch.no_grad():
        ref32 = twin(torch.from_numpy(x))
        ref64 = twin.double()(torch.from_numpy(x).double())
    for name, a, b in zip(("pred", "aux", "rep", "rep_clf"), eager, graph):
        assert (a is None) == (b is None)
        if a is not None:
            tol = 2 * float32_tol(ref32[name].numpy(), ref64[name].numpy())  # each may be float32_tol off
            diff = float(np.abs(a.asnumpy() - b.asnumpy()).max())
            print(f"{name}: graph vs pynative {diff:.2e}, float32 tolerance {tol:.2e}")
            assert diff <= tol, (name, diff, tol)


def test_head_planes_sets_the_stride4_head_width_and_the_prototype_feature_size():
    """`net.decoder.kwargs.head_planes` (the demo's small CPU model): every stride-4 conv of the decoder has that
    many outputs, rep_clf (what PCR's prototypes live in) has 2x, and a prototype head of another width is refused."""
    cfg = tiny_config()
    cfg["net"]["decoder"]["kwargs"]["head_planes"] = 32
    cfg["net"]["proto_head"]["in_planes"] = 64
    net = create_model(cfg["net"])
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    assert shapes["decoder.low_conv.0.weight"][0] == 32 and shapes["decoder.head.0.weight"][0] == 32
    assert shapes["decoder.classifier.0.weight"][:2] == (32, 64)
    assert shapes["decoder.classifier.8.weight"][:2] == (cfg["net"]["num_classes"], 32)
    assert shapes["proto_net.proto_list"][1] == 64
    pred, _, _, rep_clf = net(ms.Tensor(np.zeros((1, 3, 65, 65), np.float32)))
    assert rep_clf.shape[1] == 64 and pred.shape[1] == cfg["net"]["num_classes"]
    cfg["net"]["proto_head"]["in_planes"] = 512
    with pytest.raises(UserError, match=r"net.proto_head.in_planes: 512, expected 64 \(2 x net.decoder.kwargs.head_planes"):
        create_model(cfg["net"])
