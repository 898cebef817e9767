"""DeepLabv3+ decoder (U2PL `dec_deeplabv3_plus` + PCR's `rep_clf`) and the auxiliary head.

Sequential layouts keep ReLU/Dropout cells in place so child indices equal torch's (`classifier.8` is the last conv).
"""
from mindspore import nn, ops

from .layers import GlobalAvgPool, batch_norm, conv2d, dropout2d, resize_bilinear

HEAD_PLANES = 256
DROPOUT = 0.1


def conv_bn_relu(in_ch, out_ch, kernel_size, sync_bn, dilation=1, bias=False, pool=False):
    layers = [GlobalAvgPool()] if pool else []
    padding = dilation * (kernel_size // 2)
    layers += [conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=bias),
               batch_norm(out_ch, sync_bn), nn.ReLU()]
    return layers


def classifier_head(in_ch, out_ch, sync_bn, planes=HEAD_PLANES):
    """[conv3x3+bn+relu+drop] x2 + conv1x1: U2PL's `classifier` and `representation` heads."""
    return nn.SequentialCell(
        conv_bn_relu(in_ch, planes, 3, sync_bn, bias=True) + [dropout2d(DROPOUT)]
        + conv_bn_relu(planes, planes, 3, sync_bn, bias=True) + [dropout2d(DROPOUT)]
        + [conv2d(planes, out_ch, 1, bias=True)])


class ASPP(nn.Cell):
    """Atrous spatial pyramid pooling: [image pool, 1x1, 3 dilated 3x3], concatenated in that order."""

    def __init__(self, in_planes, inner_planes=256, dilations=(12, 24, 36), sync_bn=False):
        super().__init__()
        self.conv1 = nn.SequentialCell(conv_bn_relu(in_planes, inner_planes, 1, sync_bn, pool=True))
        self.conv2 = nn.SequentialCell(conv_bn_relu(in_planes, inner_planes, 1, sync_bn))
        self.conv3 = nn.SequentialCell(conv_bn_relu(in_planes, inner_planes, 3, sync_bn, dilation=dilations[0]))
        self.conv4 = nn.SequentialCell(conv_bn_relu(in_planes, inner_planes, 3, sync_bn, dilation=dilations[1]))
        self.conv5 = nn.SequentialCell(conv_bn_relu(in_planes, inner_planes, 3, sync_bn, dilation=dilations[2]))
        self.out_planes = (len(dilations) + 2) * inner_planes

    def get_outplanes(self):
        return self.out_planes

    def construct(self, x):
        pooled = self.conv1(x)
        # bilinear upsampling of a 1x1 map with align_corners=True is an exact broadcast
        pooled = ops.broadcast_to(pooled, (pooled.shape[0], pooled.shape[1], x.shape[2], x.shape[3]))
        return ops.cat((pooled, self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)), 1)


class DeepLabV3PlusDecoder(nn.Cell):
    """Returns (pred, rep, rep_clf): class logits at stride 4, the optional `head_planes`-d representation
    (U2PL/BRPG), and the 2 x `head_planes` concatenation [low_feat, aspp] that PCR's prototype head reads (None when
    disabled). `head_planes` is 256 upstream (hard-coded there); smaller values are for small CPU models (the demo):
    at stride 4 the two 3x3 convs of the classifier cost more than a ResNet-18 backbone."""

    def __init__(self, in_planes, num_classes, low_planes=256, inner_planes=256, dilations=(12, 24, 36),
                 rep_head=True, rep_clf=False, sync_bn=False, head_planes=HEAD_PLANES):
        super().__init__()
        self.rep_head = rep_head
        self.rep_clf = rep_clf
        self.head_planes = head_planes
        self.low_conv = nn.SequentialCell(conv_bn_relu(low_planes, head_planes, 1, sync_bn, bias=True))
        self.aspp = ASPP(in_planes, inner_planes, dilations, sync_bn)
        self.head = nn.SequentialCell(conv_bn_relu(self.aspp.get_outplanes(), head_planes, 3, sync_bn)
                                      + [dropout2d(DROPOUT)])
        self.classifier = classifier_head(2 * head_planes, num_classes, sync_bn, head_planes)
        if rep_head:
            self.representation = classifier_head(2 * head_planes, head_planes, sync_bn, head_planes)

    def construct(self, low, high):
        low_feat = self.low_conv(low)
        aspp_out = self.head(self.aspp(high))
        aspp_out = resize_bilinear(aspp_out, low_feat.shape[2:])
        feat = ops.cat((low_feat, aspp_out), 1)
        rep = self.representation(feat) if self.rep_head else None
        rep_clf = feat if self.rep_clf else None
        return self.classifier(feat), rep, rep_clf


class AuxHead(nn.Cell):
    """Auxiliary classifier on layer3 (Cityscapes configs): conv3x3 (with bias, as torch) + bn + relu + drop + 1x1."""

    def __init__(self, in_planes, num_classes, sync_bn=False):
        super().__init__()
        self.aux = nn.SequentialCell(conv_bn_relu(in_planes, HEAD_PLANES, 3, sync_bn, bias=True)
                                     + [dropout2d(DROPOUT), conv2d(HEAD_PLANES, num_classes, 1, bias=True)])

    def construct(self, x):
        return self.aux(x)
