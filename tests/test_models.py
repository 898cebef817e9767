"""Model port: names and counts against the PyTorch layout, dilations, torch-equivalent init, and the operators
whose MindSpore defaults differ from PyTorch (max-pool padding, BatchNorm momentum, Dropout2d, L2 normalisation)."""
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
from tests.helpers import CITY_CONFIG, VOC_CONFIG, load_yaml, tiny_config

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


@pytest.mark.parametrize("size", [(64, 64), (65, 66), (250, 188), (33, 128)])
def test_max_pool_matches_torch_ceil_mode_with_padding(size):
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    ours = max_pool_3x3_s2()(ms.Tensor(x)).asnumpy()
    ref = F.max_pool2d(torch.from_numpy(x), 3, 2, 1, ceil_mode=True).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def test_batchnorm_train_step_matches_torch_momentum_and_unbiased_variance():
    x = np.random.default_rng(1).standard_normal((4, 3, 5, 5)).astype(np.float32) * 2 + 1
    bn = batch_norm(3)
    bn.set_train(True)
    y = bn(ms.Tensor(x)).asnumpy()
    ref = torch.nn.BatchNorm2d(3).train()
    y_ref = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.asnumpy(), ref.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.asnumpy(), ref.running_var.numpy(), atol=1e-6)


def test_dropout2d_drops_whole_channels_with_probability_p():
    drop = dropout2d(0.1)
    drop.set_train(True)
    y = drop(ms.Tensor(np.ones((64, 64, 3, 3), np.float32))).asnumpy()
    per_channel = y.reshape(64 * 64, 9)
    assert np.all((per_channel == 0).all(1) | np.isclose(per_channel, 1 / 0.9).all(1))
    assert 0.07 < (per_channel == 0).all(1).mean() < 0.13  # p is the drop rate, not keep_prob
    drop.set_train(False)
    np.testing.assert_array_equal(drop(ms.Tensor(np.ones((2, 3, 4, 4), np.float32))).asnumpy(), 1.0)


def test_l2_normalize_matches_torch_also_near_zero():
    x = np.random.default_rng(2).standard_normal((6, 8)).astype(np.float32)
    x[0] = 0.0
    x[1] *= 1e-7
    np.testing.assert_allclose(l2_normalize(ms.Tensor(x), 1).asnumpy(),
                               F.normalize(torch.from_numpy(x), dim=1).numpy(), atol=1e-6)


def test_proto_head_logits_index_and_momentum_update_against_numpy():
    rng = np.random.default_rng(3)
    c, k, d, n = 3, 2, 5, 40
    head = CosineProtoHead(d, c, k, temperature=0.1, momentum=0.9)
    bank = rng.standard_normal((c * k, d)).astype(np.float32)
    head.proto_list.set_data(ms.Tensor(bank))
    feats = np.abs(rng.standard_normal((n, d))).astype(np.float32)
    logits, index = head(ms.Tensor(feats))
    cos = (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ (bank / np.linalg.norm(bank, axis=1,
                                                                                           keepdims=True)).T
    cos = cos.reshape(n, c, k)
    np.testing.assert_allclose(logits.asnumpy(), cos.max(2) / 0.1, atol=1e-5)
    np.testing.assert_array_equal(index.asnumpy(), cos.argmax(2))

    target = rng.integers(0, c, n)
    valid = rng.random(n) > 0.3
    sums, counts = head.update_statistics(ms.Tensor(feats), ms.Tensor(target.astype(np.int32)),
                                          ms.Tensor(valid), index)
    head.momentum_update(sums, counts)
    expected = bank.copy()
    for slot in range(c * k):  # the loop the vectorised update replaces
        cls, micro = divmod(slot, k)
        chosen = valid & (target == cls) & (cos.argmax(2)[np.arange(n), target] == micro)
        if chosen.any():
            expected[slot] = 0.9 * bank[slot] + 0.1 * feats[chosen].mean(0)
    np.testing.assert_allclose(head.proto_list.asnumpy(), expected, atol=1e-6)


def test_graph_mode_matches_pynative_on_a_small_model():
    cfg = tiny_config()
    net = create_model(cfg["net"])
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(4).standard_normal((1, 3, 50, 62)).astype(np.float32))
    eager = net(x)
    graph = ms.jit(net.construct)(x)
    for a, b in zip(eager, graph):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=1e-5)
