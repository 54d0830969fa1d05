"""uepo: offline-to-online RL with a multi-seed diffusion policy (UEPO), with fused kernels.

    import uepo
    run = uepo.fit("bench", dataset="local/hopper/medium-v0")
    policy = uepo.load_policy(run.dir)
    action = policy.act(obs_history)

``fit``, ``load_policy``, ``Policy``, ``Config`` and ``preset`` are imported on first use, so
``import uepo`` (and ``uepo.backend()``) stays light.
"""

from uepo import ops
from uepo.ops import backend

__version__ = "0.1.0"
__all__ = ["Config", "Policy", "__version__", "backend", "fit", "load_policy", "ops", "preset"]

_LAZY = {"fit": "uepo.api", "load_policy": "uepo.api", "Policy": "uepo.api", "Config": "uepo.config",
         "preset": "uepo.config"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'uepo' has no attribute {name!r}")
