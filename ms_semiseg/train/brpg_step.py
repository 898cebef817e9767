"""Former home of BRPG's trainer glue, now `ms_semiseg.methods.brpg`. Kept as a re-export only because
`ms_semiseg/demo/run.py` (`brpg_unavailable_reason`) probes this module's existence; drop it once the demo asks
`ms_semiseg.methods.brpg.method` instead."""
from ..methods.brpg.method import BRPGTraining, check_brpg_config  # noqa: F401
