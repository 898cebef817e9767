"""The `net:` config section's schema without a deep-learning framework: the encoder names and their stages, the
allowed keys, and U2PL's per-stage dilations.

Shared by the MindSpore model (`ms_semiseg.models`), the config checks (`ms_semiseg.config.net_config`) and the
PyTorch reference model (`convert/torch_model.py`). It imports no MindSpore on purpose: the PyTorch side of the
benches builds its model through here, and a MindSpore import there (~360 MiB) was counted as PyTorch's memory.
"""
from .errors import UserError

# encoder name -> (block kind, blocks per stage), as torchvision / U2PL
ARCH_LAYERS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
ENCODER_KWARGS = {"multi_grid", "zero_init_residual", "fpn", "replace_stride_with_dilation", "deep_stem"}
ENCODER_KWARGS.add("stem_pool")  # issue 16: the stem max-pool form, checked in models/resnet.check_stem_pool
DECODER_KWARGS = {"inner_planes", "dilations", "rep_head", "rep_clf", "head_planes"}
DECODER_TYPES = ("dec_deeplabv3_plus",)


def short_type(type_path):
    """`core.models.resnet.resnet101` / `u2pl.models.resnet.resnet101` -> `resnet101`."""
    return str(type_path).rsplit(".", 1)[-1]


def _check_kwargs(section, kwargs, allowed):
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise UserError(f"net.{section}.kwargs: unknown key(s) {unknown}, expected some of {sorted(allowed)}")


def validate_net_config(net_cfg):
    """Checks the encoder/decoder sections; returns (arch, encoder kwargs, decoder kwargs)."""
    enc_cfg, dec_cfg = net_cfg["encoder"], net_cfg["decoder"]
    arch = short_type(enc_cfg["type"])
    if arch not in ARCH_LAYERS:
        raise UserError(f"net.encoder.type: {enc_cfg['type']!r} is not supported, "
                        f"expected one of {sorted(ARCH_LAYERS)}")
    enc_kwargs = dict(enc_cfg.get("kwargs") or {})
    _check_kwargs("encoder", enc_kwargs, ENCODER_KWARGS)
    if not enc_kwargs.get("fpn", False):
        raise UserError("net.encoder.kwargs.fpn: DeepLabv3+ needs the low-level features, expected fpn: True")
    if short_type(dec_cfg["type"]) not in DECODER_TYPES:
        raise UserError(f"net.decoder.type: {dec_cfg['type']!r} is not supported, expected {DECODER_TYPES}")
    dec_kwargs = dict(dec_cfg.get("kwargs") or {})
    _check_kwargs("decoder", dec_kwargs, DECODER_KWARGS)
    return arch, enc_kwargs, dec_kwargs


MULTI_GRID = (2, 2, 4)


def layer_dilations(num_blocks, stride, dilation, dilate, multi_grid):
    """Per-block dilations of one stage, as U2PL's `_make_layer`: returns (stride, dilations, new dilation).

    With `dilate`, the stage's stride becomes dilation; block 0 keeps the previous dilation. Multi-grid
    multiplies by (2, 2, 4): layer4 of ResNet-101 at output stride 8 gets (4, 8, 16).
    """
    previous = dilation
    if dilate:
        dilation *= stride
        stride = 1
    grids = MULTI_GRID if multi_grid else (1,) * num_blocks
    dilations = [previous * grids[0]] + [dilation * grids[i] for i in range(1, num_blocks)]
    return stride, dilations, dilation
