"""Randomly initialised PyTorch reference models with realistic BatchNorm statistics."""
import torch

from .torch_model import TorchModelBuilder

CALIBRATION_SIZE = 97
# With calibrated BN the last 1x1 convs give logits up to ~20 at 769x769, where float32 rounding alone puts torch
# 1.2e-4 away from its own float64 result. Scaling them keeps logits at the few-units scale of a fresh classifier,
# so the 1e-4 absolute parity tolerance measures the port, not rounding (see `python -m convert parity --fp64`).
LOGIT_LAYERS = ("decoder.classifier.8.", "auxor.aux.4.")
LOGIT_SCALE = 0.25


def random_reference_model(net_cfg, seed=0):
    """Torch-default init, random BN affine parameters, BN running stats calibrated on a random batch (so
    activations keep a realistic scale through 100+ layers), then perturbed; random prototype bank.

    Residual branches end with a small BN scale, as in trained ResNets: with unit scales a 100-layer random net
    amplifies float32 rounding (1e-6 relative) to 1e-3 in its logits, which would hide real port errors."""
    torch.manual_seed(seed)
    model = TorchModelBuilder(net_cfg)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    residual_ends = {id(b.bn3 if hasattr(b, "bn3") else b.bn2) for b in model.encoder.modules() if hasattr(b, "bn2")}
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.05, 0.3) if id(bn) in residual_ends else bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
            bn.momentum = 1.0  # running stats := this batch's statistics
        model.train()
        model(torch.randn(2, 3, CALIBRATION_SIZE, CALIBRATION_SIZE))
        for bn in bns:
            bn.momentum = 0.1
            bn.running_mean.add_(0.05 * torch.randn_like(bn.running_mean))
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.8, 1.25))
            bn.num_batches_tracked.fill_(int(torch.randint(1, 10000, ())))
        for name, param in model.named_parameters():
            if name.startswith(LOGIT_LAYERS):
                param.mul_(LOGIT_SCALE)
    return model.eval()
