"""The checkpoints published with the paper (JAX/Flax): a restricted loader and a converter.

``convert_official(ckpt, out)`` writes a model directory that ``load_model`` and
``sample`` use; ``read_official_checkpoint`` reads a file without running any of
its code (see ``safe_pickle``). Needs numpy only, not jax.
"""

from .convert import convert_official, official_to_model, read_official_checkpoint
from .safe_pickle import StandIn, safe_loads

__all__ = ["StandIn", "convert_official", "official_to_model", "read_official_checkpoint", "safe_loads"]
