"""BRPG (`trainer.prototype`, docs/brpg.md). `step.py`: the compiled semi step and teacher graph; `method.py`: the
host side behind the Method interface; `state.py`: BRPGState and the prototype bank; `queue.py`: CPG sampling into the
feature queues; `cluster.py`: APO + k-means; `settings.py`: the validated config section; the loss formulas are in
`ms_semiseg/losses/brpg.py`. Nothing is imported here: `method_class` reads only `settings.py` at start-up, and the
rest pulls in scikit-learn (~1.5 s)."""
