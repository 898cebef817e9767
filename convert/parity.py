"""`python -m convert parity`: PyTorch reference vs converted MindSpore model, head by head, in eval mode.

The last line, `parity: max_abs_diff=<x> argmax_agreement=<y> decisive_agreement=<z>`, is what scripts and tests
parse: <x> the largest |logit difference| over every head, <y> the argmax agreement over all pixels (the worst head)
and <z> the agreement over the decisive pixels, those whose two best reference logits are more than 2*atol apart.
<y> depends on the CPU (a near-tie pixel may flip when oneDNN picks other kernels); <x> <= atol and <z> == 1 do not.
Agreements are rounded down, so 1.000000 means every pixel agrees.
"""
import math
import time

import numpy as np

from ms_semiseg.config import load_config, net_config
from ms_semiseg.errors import UserError

from . import mapping


def torch_model_from(cfg, pth=None, state=None, seed=0):
    import torch
    from .reference import random_reference_model
    from .torch_model import TorchModelBuilder
    if pth is None:
        return random_reference_model(net_config(cfg), seed=seed)
    state_dict, _ = mapping.read_pth(pth, state)
    if mapping.is_imagenet_backbone(state_dict):
        raise UserError(f"{pth}: an ImageNet backbone has no segmentation heads, expected a U2PL/PCR checkpoint")
    model = TorchModelBuilder(net_config(cfg))
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"{pth}: does not match the config's model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()


def ms_model_from_torch(cfg, torch_model):
    """The converter's path: torch state_dict -> renamed arrays -> verified load into the MindSpore model."""
    import mindspore as ms
    from ms_semiseg.models import create_model
    from ms_semiseg.utils.checkpoint import load_into_model
    params = mapping.torch_to_ms({k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()})
    net = create_model(net_config(cfg))
    load_into_model(net, "(converted reference)", {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in params.items()})
    net.set_train(False)
    return net


def torch_heads(model, x, device, dtype=None):
    import torch
    with torch.no_grad():
        inputs = torch.from_numpy(x).to(device)
        outs = model(inputs if dtype is None else inputs.to(dtype))
        pred_full = torch.nn.functional.interpolate(outs["pred"], size=x.shape[2:], mode="bilinear",
                                                    align_corners=True)
    heads = {"pred": outs["pred"], "pred_full": pred_full, "aux": outs.get("aux"), "proto": outs.get("proto")}
    return {k: v.cpu().numpy() for k, v in heads.items() if v is not None}


def ms_heads(net, x):
    import mindspore as ms
    from ms_semiseg.models.builder import inference_heads
    tensor = ms.Tensor(x)
    outs = net(tensor)
    pred_full, proto = inference_heads(net, x.shape[2:], outs)
    heads = {"pred": outs[0], "pred_full": pred_full, "aux": outs[1], "proto": proto}
    return {k: v.asnumpy() for k, v in heads.items() if v is not None}


def top2_margin(logits):
    top2 = np.partition(logits, -2, axis=1)
    return top2[:, -1] - top2[:, -2]


def compare_heads(ref, ours, atol=1e-4):
    """Per head: (max |diff|, argmax agreement, argmax agreement where the reference's top-2 margin exceeds 2*atol,
    shape). Pixels whose two best classes are within the tolerance may legitimately flip under rounding."""
    report = {}
    for name in ref:
        if ref[name].shape != ours[name].shape:
            raise AssertionError(f"head {name}: torch shape {ref[name].shape} != MindSpore {ours[name].shape}")
        diff = float(np.abs(ref[name] - ours[name]).max())
        same = ref[name].argmax(1) == ours[name].argmax(1)
        decisive = top2_margin(ref[name]) > 2 * atol
        report[name] = (diff, float(same.mean()), float(same[decisive].mean()) if decisive.any() else 1.0,
                        ref[name].shape)
    return report


def floor6(fraction):
    """A fraction with 6 decimals, rounded down: 1.000000 only when it is exactly 1 (0.9999996 -> 0.999999)."""
    return f"{math.floor(fraction * 1e6 + 1e-7) / 1e6:.6f}"  # + 1e-7: 0.999995 may be stored as 0.99999499


def print_fp64_floor(ref_model, x, device, ref32, ours32):
    """Both fp32 models against the torch model run in float64: shows whether a difference is port error or the
    float32 rounding that torch itself has."""
    import copy
    import torch
    ref64 = torch_heads(copy.deepcopy(ref_model).double(), x, device, dtype=torch.float64)
    print(f"{'head':<10} {'torch32_vs_fp64':>16} {'mindspore32_vs_fp64':>20}")
    for name in ref32:
        print(f"{name:<10} {np.abs(ref32[name] - ref64[name]).max():>16.3e} "
              f"{np.abs(ours32[name] - ref64[name]).max():>20.3e}")


def run_parity(args):
    import mindspore as ms
    import torch
    from ms_semiseg.device import set_device
    device = set_device(args.device)
    if device == "GPU" and not torch.cuda.is_available():
        raise UserError("--device GPU: torch sees no CUDA device, expected a CUDA build of torch for GPU parity")
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
    torch_device = "cuda" if device == "GPU" else "cpu"
    cfg = load_config(args.config)
    start = time.perf_counter()
    ref_model = torch_model_from(cfg, args.pth, args.state, args.seed).to(torch_device)
    net = ms_model_from_torch(cfg, ref_model)
    x = np.random.default_rng(args.seed).standard_normal((args.batch, 3, args.height, args.width)).astype(np.float32)
    timer = time.perf_counter()
    ref = torch_heads(ref_model, x, torch_device)
    torch_s, timer = time.perf_counter() - timer, time.perf_counter()
    ours = ms_heads(net, x)
    ms_s = time.perf_counter() - timer
    report = compare_heads(ref, ours, args.atol)
    print(f"parity on {device} ({args.mode}), input {tuple(x.shape)}, weights: {args.pth or 'random'}")
    print(f"{'head':<10} {'shape':<22} {'max_abs_diff':>13} {'rel_to_max':>11} {'argmax_agreement':>17} "
          f"{'where_margin>2atol':>19}")
    for name, (diff, agree, decisive, shape) in report.items():
        rel = diff / max(float(np.abs(ref[name]).max()), 1e-12)
        print(f"{name:<10} {str(shape):<22} {diff:>13.3e} {rel:>11.2e} {floor6(agree):>17} {floor6(decisive):>19}")
    if args.fp64:
        print_fp64_floor(ref_model, x, torch_device, ref, ours)
    worst = max(r[0] for r in report.values())
    agreement = min(r[1] for r in report.values())
    decisive = min(r[2] for r in report.values())
    print(f"torch forward {torch_s:.1f} s, MindSpore forward {ms_s:.1f} s, total {time.perf_counter() - start:.1f} s")
    print(f"parity: max_abs_diff={worst:.3e} argmax_agreement={floor6(agreement)} "
          f"decisive_agreement={floor6(decisive)}")
    return 0 if worst <= args.atol and decisive == 1.0 else 1
