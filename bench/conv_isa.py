"""Why ms_semiseg caps oneDNN at AVX2: times one 3x3 convolution in MindSpore with oneDNN's default ISA and with
ONEDNN_MAX_CPU_ISA=AVX2, side by side (one subprocess each), and prints the kernel oneDNN chose.

    python bench/conv_isa.py [--channels 256] [--size 33]
"""
import argparse
import os
import subprocess
import sys

CHILD = r"""
import sys, time, numpy as np, mindspore as ms
from mindspore import nn
ms.set_device("CPU")
c, s = int(sys.argv[1]), int(sys.argv[2])
x = ms.Tensor(np.random.randn(1, c, s, s).astype(np.float32))
conv = nn.Conv2d(c, c, 3, pad_mode="pad", padding=1)
conv(x).asnumpy()
start = time.perf_counter()
for _ in range(3):
    conv(x).asnumpy()
print(f"RESULT {(time.perf_counter() - start) / 3 * 1000:.1f}")
"""


def run(isa, channels, size):
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    env.update({"ONEDNN_VERBOSE": "1", "GLOG_v": "3"})
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    out = subprocess.run([sys.executable, "-c", CHILD, str(channels), str(size)], env=env,
                         capture_output=True, text=True, check=True).stdout
    ms_time = float([ln for ln in out.splitlines() if ln.startswith("RESULT")][-1].split()[1])
    kernels = [ln.split(",")[6] for ln in out.splitlines() if ",exec,cpu,convolution," in ln]
    return ms_time, kernels[-1] if kernels else "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=33)
    args = parser.parse_args()
    default_ms, default_kernel = run(None, args.channels, args.size)
    avx2_ms, avx2_kernel = run("AVX2", args.channels, args.size)
    print(f"conv3x3 {args.channels}->{args.channels} at {args.size}x{args.size}, 1 image, fp32")
    print(f"  oneDNN default ISA : {default_ms:9.1f} ms  kernel {default_kernel}")
    print(f"  ONEDNN_MAX_CPU_ISA=AVX2: {avx2_ms:9.1f} ms  kernel {avx2_kernel}")
    print(f"speedup with AVX2 cap: {default_ms / avx2_ms:.1f}x")


if __name__ == "__main__":
    main()
