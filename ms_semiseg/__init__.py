"""ms-semiseg: prototype-based semi-supervised semantic segmentation (PCR, BRPG) in MindSpore."""
import os

# MindSpore 2.10 bundles oneDNN 3.10, which on AVX-512 CPUs runs fp32 NCHW convolutions with a reference-speed
# kernel (`jit_uni_ncsp:conv+ref`, measured 300x slower than its GEMM kernel for a 3x3 256->256 conv). Capping the
# ISA at AVX2 selects the GEMM kernel. oneDNN reads this at its first primitive, so importing ms_semiseg before
# running any MindSpore op is enough; set ONEDNN_MAX_CPU_ISA yourself to override. See bench/conv_isa.py.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

__version__ = "0.1.0"
