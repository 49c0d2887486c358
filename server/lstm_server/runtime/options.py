"""What the model runtime is told to load and how to run it; plain values, no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RuntimeOptions:
    """The model to serve (a ``.keras`` file, or the seeded default of ``features`` x ``units``)
    and how to compile and run it."""

    model: Path | None = None
    features: int = 1
    units: int = 1
    seed: int = 0
    save_model: Path | None = None
    chunk_timesteps: int = 128
    max_rows: int = 64
    xla: bool = True
    compile_cache: Path | None = None  # XLA's persistent cache of compiled shapes
    compile_cache_max_bytes: int = 512 * 2**20
    fast_path: bool = True
