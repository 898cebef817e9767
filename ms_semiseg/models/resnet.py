"""Deep-stem ResNet (U2PL/PCR encoder) with dilation, multi-grid and FPN outputs.

Parameter names follow the PyTorch state_dict (`conv1.0.weight`, `layer3.5.bn2.gamma`, ...), so a PyTorch
checkpoint converts by renaming BatchNorm leaves only.
"""
from mindspore import nn
from mindspore.common.initializer import initializer

from ..errors import UserError
from ..net_spec import ARCH_LAYERS, layer_dilations
from .layers import STEM_POOLS, batch_norm, conv2d, max_pool_3x3_s2

ENCODER_INIT = "kaiming_fan_out"


def _conv3x3(in_ch, out_ch, stride=1, dilation=1):
    return conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, init=ENCODER_INIT)


def _conv1x1(in_ch, out_ch, stride=1):
    return conv2d(in_ch, out_ch, 1, stride=stride, init=ENCODER_INIT)


class BasicBlock(nn.Cell):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1, sync_bn=False):
        super().__init__()
        # dilated BasicBlocks (not in torchvision) let ResNet-18/34 run at output stride 8 for the demo
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = batch_norm(planes, sync_bn)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = batch_norm(planes, sync_bn)
        self.downsample = downsample

    def last_bn(self):
        return self.bn2

    def construct(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Cell):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1, sync_bn=False):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = batch_norm(planes, sync_bn)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = batch_norm(planes, sync_bn)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = batch_norm(planes * self.expansion, sync_bn)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def last_bn(self):
        return self.bn3

    def construct(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
ARCHS = {name: (BLOCKS[kind], layers) for name, (kind, layers) in ARCH_LAYERS.items()}


def check_stem_pool(stem_pool):
    """net.encoder.kwargs.stem_pool: 'pytorch' (default, the paper) or 'same' (the original MindSpore release)."""
    if stem_pool not in STEM_POOLS:
        raise UserError(f"net.encoder.kwargs.stem_pool: {stem_pool!r}, expected 'pytorch' (padding=1, "
                        "ceil_mode=True: the paper's numbers) or 'same' (pad_mode='same': the original PCR "
                        "MindSpore release's numbers)")
    return stem_pool


class ResNet(nn.Cell):
    def __init__(self, block, layers, zero_init_residual=False, replace_stride_with_dilation=(False, False, False),
                 multi_grid=False, fpn=False, deep_stem=True, sync_bn=False, stem_pool="pytorch"):
        super().__init__()
        check_stem_pool(stem_pool)
        self.fpn = fpn
        self.sync_bn = sync_bn
        if deep_stem:
            self.conv1 = nn.SequentialCell([
                _conv3x3(3, 64, stride=2), batch_norm(64, sync_bn), nn.ReLU(),
                _conv3x3(64, 64), batch_norm(64, sync_bn), nn.ReLU(),
                _conv3x3(64, 128)])
            self.inplanes = 128
        else:  # torchvision 7x7 stem
            self.conv1 = conv2d(3, 64, 7, stride=2, padding=3, init=ENCODER_INIT)
            self.inplanes = 64
        self.bn1 = batch_norm(self.inplanes, sync_bn)
        self.relu = nn.ReLU()
        self.stem_pool = stem_pool
        self.maxpool = max_pool_3x3_s2(stem_pool)
        self.dilation = 1
        dilate = (False,) + tuple(replace_stride_with_dilation)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, dilate[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, dilate[1])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, dilate[2])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, dilate[3], multi_grid)
        self.layer1_planes = 64 * block.expansion
        self.out_planes = 512 * block.expansion
        if zero_init_residual:
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
                for blk in layer:
                    bn = blk.last_bn()
                    bn.gamma.set_data(initializer("zeros", bn.gamma.shape, bn.gamma.dtype))

    def _make_layer(self, block, planes, num_blocks, stride, dilate, multi_grid=False):
        stride, dilations, self.dilation = layer_dilations(num_blocks, stride, self.dilation, dilate, multi_grid)
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.SequentialCell([_conv1x1(self.inplanes, planes * block.expansion, stride),
                                            batch_norm(planes * block.expansion, self.sync_bn)])
        blocks = [block(self.inplanes, planes, stride, downsample, dilations[0], self.sync_bn)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes, 1, None, d, self.sync_bn) for d in dilations[1:]]
        return nn.SequentialCell(blocks)

    def get_outplanes(self):
        return self.out_planes

    def construct(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        if self.fpn:
            return x1, x2, x3, x4
        return x3, x4


def build_resnet(arch, **kwargs):
    block, layers = ARCHS[arch]
    return ResNet(block, layers, **kwargs)
