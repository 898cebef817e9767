"""What every training method is built from: the compiled-step building blocks (`steps.py`), the host-drawn masks
(`masks.py`), data parallel (`distributed.py`), the teacher EMA (`ema.py`), the optimizer (`optim.py`), the training
state in last.ckpt (`state.py`) and the training batches (`pipeline.py`). The methods (`ms_semiseg.methods`) compose
these; the trainer (`ms_semiseg.train`) runs them."""
