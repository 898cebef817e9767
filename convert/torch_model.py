"""PyTorch reference of the U2PL/PCR segmentor, with exactly the upstream state_dict keys.

Written from the architecture description (shared spec A.1-A.5) so parity tests have an independent reference:
`encoder.conv1.0.weight` ... `decoder.classifier.8.bias`, `auxor.aux.*` and `proto_net.proto_list`
(696 keys for PCR-VOC, 705 for PCR-Cityscapes, counting num_batches_tracked).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ms_semiseg.net_spec import MULTI_GRID, layer_dilations, short_type

BLOCKS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
          "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3)),
          "resnet152": ("bottleneck", (3, 8, 36, 3))}
assert MULTI_GRID == (2, 2, 4)


def conv3x3(cin, cout, stride=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(inplanes, planes, stride, dilation), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(planes, planes, 1, dilation), nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride, dilation), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class SamePadMaxPool(nn.Module):
    """MindSpore's MaxPool2d(3, 2, pad_mode='same') in torch (the original PCR MindSpore release's stem): ceil(n/2)
    outputs, the total padding max((out - 1) * 2 + 3 - n, 0) split with the smaller half first, padded with -inf."""

    def forward(self, x):
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
            total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


class ResNet(nn.Module):
    def __init__(self, arch, zero_init_residual=False, replace_stride_with_dilation=(False, False, False),
                 multi_grid=False, fpn=False, deep_stem=True, stem_pool="pytorch"):
        super().__init__()
        kind, layers = BLOCKS[arch]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        self.fpn = fpn
        if deep_stem:
            self.conv1 = nn.Sequential(conv3x3(3, 64, 2), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                       conv3x3(64, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                       conv3x3(64, 128))
            self.inplanes = 128
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.inplanes = 64
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        if stem_pool not in ("pytorch", "same"):
            raise ValueError(f"stem_pool {stem_pool!r}: expected 'pytorch' or 'same'")
        self.maxpool = SamePadMaxPool() if stem_pool == "same" else nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.dilation = 1
        dilate = (False,) + tuple(replace_stride_with_dilation)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, dilate[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, dilate[1])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, dilate[2])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, dilate[3], multi_grid)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (Bottleneck, BasicBlock)):
                    nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)
        self.layer1_planes, self.out_planes = 64 * block.expansion, 512 * block.expansion

    def _make_layer(self, block, planes, blocks, stride, dilate, multi_grid=False):
        stride, dilations, self.dilation = layer_dilations(blocks, stride, self.dilation, dilate, multi_grid)
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, dilations[0])]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, d) for d in dilations[1:]]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x1, x2, x3, x4] if self.fpn else [x3, x4]


def _cbr(cin, cout, k, dilation=1, bias=False):
    return [nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=bias),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _classifier(cin, cout, planes=256):
    return nn.Sequential(*_cbr(cin, planes, 3, bias=True), nn.Dropout2d(0.1), *_cbr(planes, planes, 3, bias=True),
                         nn.Dropout2d(0.1), nn.Conv2d(planes, cout, 1, bias=True))


class ASPP(nn.Module):
    def __init__(self, in_planes, inner_planes=256, dilations=(12, 24, 36)):
        super().__init__()
        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), *_cbr(in_planes, inner_planes, 1))
        self.conv2 = nn.Sequential(*_cbr(in_planes, inner_planes, 1))
        self.conv3 = nn.Sequential(*_cbr(in_planes, inner_planes, 3, dilations[0]))
        self.conv4 = nn.Sequential(*_cbr(in_planes, inner_planes, 3, dilations[1]))
        self.conv5 = nn.Sequential(*_cbr(in_planes, inner_planes, 3, dilations[2]))
        self.out_planes = (len(dilations) + 2) * inner_planes

    def forward(self, x):
        h, w = x.shape[-2:]
        pooled = F.interpolate(self.conv1(x), size=(h, w), mode="bilinear", align_corners=True)
        return torch.cat((pooled, self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)), 1)


class DecDeepLabV3Plus(nn.Module):
    def __init__(self, in_planes, num_classes, low_planes=256, inner_planes=256, dilations=(12, 24, 36),
                 rep_head=True, rep_clf=False, head_planes=256):
        """`head_planes`: U2PL's fixed 256; smaller in our demo config (net.decoder.kwargs.head_planes)."""
        super().__init__()
        self.rep_head, self.rep_clf = rep_head, rep_clf
        self.low_conv = nn.Sequential(*_cbr(low_planes, head_planes, 1, bias=True))
        self.aspp = ASPP(in_planes, inner_planes, dilations)
        self.head = nn.Sequential(*_cbr(self.aspp.out_planes, head_planes, 3), nn.Dropout2d(0.1))
        self.classifier = _classifier(2 * head_planes, num_classes, head_planes)
        if rep_head:
            self.representation = _classifier(2 * head_planes, head_planes, head_planes)

    def forward(self, feats):
        c1, _, _, c4 = feats
        low_feat = self.low_conv(c1)
        aspp_out = self.head(self.aspp(c4))
        aspp_out = F.interpolate(aspp_out, size=low_feat.shape[-2:], mode="bilinear", align_corners=True)
        feat = torch.cat((low_feat, aspp_out), 1)
        res = {"pred": self.classifier(feat)}
        if self.rep_head:
            res["rep"] = self.representation(feat)
        if self.rep_clf:
            res["rep_clf"] = feat
        return res


class AuxModule(nn.Module):
    def __init__(self, in_planes, num_classes):
        super().__init__()
        self.aux = nn.Sequential(*_cbr(in_planes, 256, 3, bias=True), nn.Dropout2d(0.1),
                                 nn.Conv2d(256, num_classes, 1, bias=True))

    def forward(self, x):
        return self.aux(x)


class CosProto(nn.Module):
    def __init__(self, in_planes, num_classes, k, temp=0.1):
        super().__init__()
        self.num_classes, self.k, self.temp = num_classes, k, temp
        self.proto_list = nn.Parameter(torch.randn(num_classes * k, in_planes), requires_grad=False)

    def forward(self, feat_map):
        b, d, h, w = feat_map.shape
        f = F.normalize(feat_map.permute(0, 2, 3, 1).reshape(-1, d), dim=1)
        sim = (f @ F.normalize(self.proto_list, dim=1).t()).reshape(-1, self.num_classes, self.k)
        value, index = sim.max(dim=2)
        to_map = lambda t: t.reshape(b, h, w, self.num_classes).permute(0, 3, 1, 2)
        return to_map(value) / self.temp, to_map(index)


class TorchModelBuilder(nn.Module):
    """forward(x) -> dict with `pred` (stride 4), `aux` (stride 8, when configured), `rep`, `rep_clf`, and in eval mode
    with a proto head also `proto` (full resolution, from rep_clf upsampled to the input size)."""

    def __init__(self, net_cfg):
        super().__init__()
        enc_kwargs = dict(net_cfg["encoder"].get("kwargs") or {})
        dec_kwargs = dict(net_cfg["decoder"].get("kwargs") or {})
        num_classes = int(net_cfg["num_classes"])
        self.encoder = ResNet(short_type(net_cfg["encoder"]["type"]), **enc_kwargs)
        proto_cfg = net_cfg.get("proto_head")
        dec_kwargs.setdefault("rep_head", True)
        dec_kwargs["rep_clf"] = bool(dec_kwargs.get("rep_clf", False) or proto_cfg)
        self.decoder = DecDeepLabV3Plus(self.encoder.out_planes, num_classes, self.encoder.layer1_planes, **dec_kwargs)
        self.use_aux = bool(net_cfg.get("aux_loss"))
        if self.use_aux:
            self.auxor = AuxModule(int(net_cfg["aux_loss"]["aux_plane"]), num_classes)
        self.use_proto = bool(proto_cfg)
        if self.use_proto:
            self.proto_net = CosProto(int(proto_cfg.get("in_planes", 512)), num_classes,
                                      int(proto_cfg["num_micro_proto"]), float(proto_cfg.get("temperature", 0.1)))

    def forward(self, x):
        feats = self.encoder(x)
        outs = self.decoder(feats)
        if self.use_aux:
            outs["aux"] = self.auxor(feats[2])
        if self.use_proto and not self.training:
            rep = F.interpolate(outs["rep_clf"], size=x.shape[-2:], mode="bilinear", align_corners=True)
            outs["proto"], outs["proto_match_idx"] = self.proto_net(rep)
        return outs
