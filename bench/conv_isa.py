"""Why ms_semiseg caps oneDNN at AVX2, and how far MindSpore's CPU convolution is from PyTorch's: times one 3x3
convolution in MindSpore with oneDNN's default ISA and with each ONEDNN_MAX_CPU_ISA of `--isas`, and in PyTorch,
side by side (one subprocess each, 2 threads, mean of 3 after a warm-up), and prints the kernel oneDNN chose.

    python bench/conv_isa.py [--channels 256] [--size 33] [--isas AVX2 AVX2_VNNI AVX512_CORE]
"""
import argparse
import os
import subprocess
import sys

CHILD = r"""
import sys, time, numpy as np, mindspore as ms
from mindspore import nn
ms.set_device("CPU")
ms.device_context.cpu.op_tuning.threads_num(2)
c, s = int(sys.argv[1]), int(sys.argv[2])
x = ms.Tensor(np.random.randn(1, c, s, s).astype(np.float32))
conv = nn.Conv2d(c, c, 3, pad_mode="pad", padding=1)
conv(x).asnumpy()
start = time.perf_counter()
for _ in range(3):
    conv(x).asnumpy()
print(f"RESULT {(time.perf_counter() - start) / 3 * 1000:.1f}")
"""
TORCH_CHILD = r"""
import sys, time, torch
torch.set_num_threads(2)
c, s = int(sys.argv[1]), int(sys.argv[2])
x = torch.randn(1, c, s, s)
conv = torch.nn.Conv2d(c, c, 3, padding=1)
with torch.no_grad():
    conv(x)
    start = time.perf_counter()
    for _ in range(3):
        conv(x)
print(f"RESULT {(time.perf_counter() - start) / 3 * 1000:.1f}")
"""


def run(isa, channels, size, child=CHILD):
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    env.update({"ONEDNN_VERBOSE": "1", "GLOG_v": "3"})
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    out = subprocess.run([sys.executable, "-c", child, str(channels), str(size)], env=env,
                         capture_output=True, text=True, check=True).stdout
    ms_time = float([ln for ln in out.splitlines() if ln.startswith("RESULT")][-1].split()[1])
    kernels = [ln.split(",")[6] for ln in out.splitlines() if ",exec,cpu,convolution," in ln]
    return ms_time, kernels[-1] if kernels else "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=33)
    parser.add_argument("--isas", nargs="+", default=["AVX2"], help="ONEDNN_MAX_CPU_ISA values to time")
    args = parser.parse_args()
    torch_ms, _ = run(None, args.channels, args.size, TORCH_CHILD)
    default_ms, default_kernel = run(None, args.channels, args.size)
    print(f"conv3x3 {args.channels}->{args.channels} at {args.size}x{args.size}, 1 image, fp32, 2 threads")
    print(f"  PyTorch                        {torch_ms:9.1f} ms")
    print(f"  MindSpore, oneDNN default ISA  {default_ms:9.1f} ms  kernel {default_kernel}")
    for isa in args.isas:
        isa_ms, kernel = run(isa, args.channels, args.size)
        print(f"  MindSpore, {isa:19s} {isa_ms:9.1f} ms  kernel {kernel}  ({isa_ms / torch_ms:.2f}x PyTorch's time, "
              f"{default_ms / isa_ms:.1f}x faster than the default ISA)")


if __name__ == "__main__":
    main()
