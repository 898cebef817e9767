"""Model construction from the upstream `net:` config section (U2PL/PCR schema)."""
from mindspore import nn

from ..errors import UserError
from ..net_spec import validate_net_config
from .decoder import AuxHead, DeepLabV3PlusDecoder
from .layers import resize_bilinear
from .proto_head import CosineProtoHead
from .resnet import build_resnet


class ModelBuilder(nn.Cell):
    """DeepLabv3+ segmentor. `construct(x)` returns (pred, aux, rep, rep_clf); heads not configured are None.

    Attribute names (`encoder`, `decoder`, `auxor`, `proto_net`) are the PyTorch module names, so parameter names
    equal the PyTorch state_dict keys up to BatchNorm leaf names.
    """

    def __init__(self, net_cfg, sync_bn=False):
        super().__init__()
        self.num_classes = int(net_cfg["num_classes"])
        arch, enc_kwargs, dec_kwargs = validate_net_config(net_cfg)
        self.encoder = build_resnet(arch, sync_bn=sync_bn, **enc_kwargs)
        proto_cfg = net_cfg.get("proto_head")
        dec_kwargs.setdefault("rep_head", True)  # U2PL's default
        dec_kwargs["rep_clf"] = bool(dec_kwargs.get("rep_clf", False) or proto_cfg)
        self.decoder = DeepLabV3PlusDecoder(self.encoder.get_outplanes(), self.num_classes,
                                            low_planes=self.encoder.layer1_planes, sync_bn=sync_bn, **dec_kwargs)
        aux_cfg = net_cfg.get("aux_loss")
        self.use_aux = bool(aux_cfg)
        if self.use_aux:
            self.auxor = AuxHead(int(aux_cfg["aux_plane"]), self.num_classes, sync_bn)
        self.use_proto = bool(proto_cfg)
        if self.use_proto:
            in_planes = int(proto_cfg.get("in_planes", 512))
            if in_planes != 2 * self.decoder.head_planes:
                raise UserError(f"net.proto_head.in_planes: {in_planes}, expected {2 * self.decoder.head_planes} "
                                f"(2 x net.decoder.kwargs.head_planes: the head reads [low_feat, aspp])")
            self.proto_net = CosineProtoHead(
                in_planes, self.num_classes, int(proto_cfg["num_micro_proto"]),
                temperature=float(proto_cfg.get("temperature", 0.1)),
                momentum=float(proto_cfg.get("proto_unpdate_momentum", 0.99)))

    def construct(self, x):
        x1, _, x3, x4 = self.encoder(x)
        pred, rep, rep_clf = self.decoder(x1, x4)
        aux = self.auxor(x3) if self.use_aux else None
        return pred, aux, rep, rep_clf


def inference_heads(model, size, outputs):
    """Eval-mode heads at input resolution from `model(x)` outputs: (pred logits, proto logits or None).

    As upstream: `pred` is upsampled from stride 4 with align_corners=True; the prototype head scores `rep_clf`
    after upsampling it to the input size (patch_select models), so it needs no further resize.
    """
    pred, _, _, rep_clf = outputs
    pred = resize_bilinear(pred, size)
    if not model.use_proto:
        return pred, None
    proto, _ = model.proto_net.dense(resize_bilinear(rep_clf, size))
    return pred, proto


class SegmentationInference(nn.Cell):
    """x (B, 3, H, W) -> (pred, proto or None), both (B, C, H, W) logits; see `inference_heads`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, x):
        return inference_heads(self.model, x.shape[2:], self.model(x))


def create_model(net_cfg, sync_bn=False):
    """mindcv-style factory: the segmentor described by an upstream `net:` config section."""
    return ModelBuilder(net_cfg, sync_bn=sync_bn)
