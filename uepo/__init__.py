"""uepo: offline-to-online RL with a multi-seed diffusion policy (UEPO), with fused kernels."""

from uepo import ops
from uepo.ops import backend

__version__ = "0.1.0"
__all__ = ["__version__", "backend", "ops"]
