"""PCR: the mean teacher plus the prototype head. `step.py` is its compiled training step, `method.py` its host side
(patch pixels, prototype initialisation), `proto_init.py` the k-means initialisation (also `ms_semiseg init-protos`)."""
