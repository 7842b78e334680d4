"""Which precision a run computes in: bf16 autocast or fp32, decided once from the config and the device.

``amp`` in the config is ``auto``, ``true`` or ``false``:

- ``false``: fp32 everywhere.
- ``true``: bf16 autocast for the training step (attack and update) and the selection pass, on CUDA and on
  a CPU that runs bf16 natively (AVX512_BF16 or AMX, detected, never assumed); on a CPU without it the run
  is refused before any work (emulated bf16 is slower than fp32).
- ``auto`` (default): bf16 on CUDA, and on a CPU with native bf16 (``CPU_BF16_BY_DEFAULT``: the accuracy
  check of ``configs/bench/amp.yaml`` found bf16 within fp32's seed spread, benchmarks/README.md, "Precision
  and speed"); fp32 on any other CPU.

Evaluation attacks (PGD, AutoAttack) always run in fp32, so robustness is never measured through reduced
precision; results record both (``precision_record``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from advcoreset.config import ConfigError

CPU_BF16_BY_DEFAULT = True
"""Whether ``amp: auto`` turns bf16 on for a CPU with native bf16 (see the module docstring)."""

AMP_VALUES = ("auto", True, False)


class PrecisionError(ConfigError):
    """bf16 was asked for on a device that cannot run it natively; the message says what to do."""


@lru_cache(maxsize=1)
def cpu_bf16_native() -> bool:
    """True if this CPU executes bf16 matrix products in hardware (AVX512_BF16 or AMX-BF16).

    Asks torch's own CPU feature probe; where that is missing (other torch builds), reads the kernel's
    CPU flags. Cached: the answer cannot change while the process runs."""
    probe = getattr(torch, "cpu", None)
    checks = [getattr(probe, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(c) for c in checks):
        try:
            return any(bool(c()) for c in checks)  # type: ignore[misc]
        except RuntimeError:
            pass
    return _cpuinfo_has_bf16(Path("/proc/cpuinfo"))


def _cpuinfo_has_bf16(path: Path) -> bool:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


@dataclass(frozen=True)
class Precision:
    """The resolved precision of a run's training step and selection pass (evaluation is always fp32)."""

    dtype: torch.dtype | None
    """torch.bfloat16 for bf16 autocast, None for fp32."""
    device_type: str
    """"cpu" or "cuda": autocast's device type."""

    @property
    def name(self) -> str:
        return "bf16" if self.dtype is not None else "fp32"

    def autocast(self) -> AbstractContextManager[Any]:
        """A fresh context manager: bf16 autocast on the run's device, or nothing."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_precision(amp: bool | str, device: torch.device, *, cpu_native: bool | None = None) -> Precision:
    """The precision ``amp`` (auto / True / False) gives on ``device``; ``cpu_native`` overrides the CPU
    probe (tests). Raises ``PrecisionError`` for ``amp: true`` on a CPU without native bf16."""
    if amp not in AMP_VALUES or not isinstance(amp, (bool, str)):
        raise PrecisionError(f"amp must be auto, true or false, got {amp!r}")
    dev = device.type
    if amp is False or dev not in ("cpu", "cuda"):
        return Precision(None, dev)
    if dev == "cuda":
        return Precision(torch.bfloat16, dev)
    native = cpu_bf16_native() if cpu_native is None else cpu_native
    if amp is True and not native:
        raise PrecisionError("amp: true asks for bf16, but this CPU has no native bf16 (AVX512_BF16 or AMX), "
                             "where it would run slower than fp32: use amp: auto or amp: false")
    on = native and (amp is True or CPU_BF16_BY_DEFAULT)
    return Precision(torch.bfloat16 if on else None, dev)


def legacy_precision(amp: Any, device: torch.device) -> str:
    """The precision a checkpoint written before precision was recorded was trained in: bf16 only on CUDA
    with amp on (the CPU ignored amp then)."""
    return "bf16" if device.type == "cuda" and amp is not False else "fp32"


def precision_record(p: Precision) -> dict[str, str]:
    """What results and metrics say about precision: the training step's, the selection pass's, and the
    evaluation's (always fp32)."""
    return {"train": p.name, "selection": p.name, "eval": "fp32"}
