"""PyTorch <-> MindSpore checkpoint conversion for U2PL/PCR models, and logit-parity checks.

Commands: `python -m convert {pth2ckpt,ckpt2pth,random,parity}` (see `python -m convert -h`).
"""
