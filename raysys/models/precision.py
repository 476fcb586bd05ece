"""The autocast precision of torch models: bfloat16 where the hardware computes it natively, else float32.

A CPU with AMX or AVX512-BF16 runs bfloat16 about twice as fast as float32; older CPUs only emulate it
and would be slower, so there the models stay in float32. On CUDA: bfloat16 where supported, else
float16. Used by the sentence encoder (:mod:`raysys.actors.embedding`) and the builtin diarizer's
speaker encoder (:mod:`raysys.models.builtin_diarization`); models must not import actors, so it lives here.
"""

from __future__ import annotations

import contextlib
from functools import cache

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}


@cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX tiles or AVX512-BF16), not by emulation."""
    import torch  # noqa: PLC0415 - torch (seconds to import) only in the processes that run a model

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):  # torch >= 2.3, private
        check = getattr(torch.cpu, probe, None)
        with contextlib.suppress(Exception):
            if check is not None and check():
                return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(_BF16_CPU_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def pick_precision(device: str, precision: str = "auto") -> str:
    """The autocast dtype name for ``device``: "float32" (no autocast), "bfloat16" or "float16"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch  # noqa: PLC0415 - torch, lazy as above

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "cpu" and cpu_has_fast_bf16():
        return "bfloat16"
    return "float32"


def autocast_for(device: str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``precision`` (a :func:`pick_precision` name) on ``device``; none for float32."""
    if precision == "float32":
        return contextlib.nullcontext()
    import torch  # noqa: PLC0415 - torch, lazy as above

    return torch.autocast(device.split(":")[0], dtype=getattr(torch, precision))
