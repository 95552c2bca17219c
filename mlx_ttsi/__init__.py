"""mlx-ttsi: LLM agents that improve themselves at test time, on MLX."""

from ._blas import preload_openblas

preload_openblas()  # before anything imports mlx

__version__ = "0.1.0"
