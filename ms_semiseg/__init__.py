"""ms-semiseg: prototype-based semi-supervised semantic segmentation (PCR, BRPG) in MindSpore."""

__version__ = "0.1.0"
