"""The MiniLM text encoder's precision choice: bfloat16 autocast where the CPU has a fast path, float32 else."""

from __future__ import annotations

import numpy as np
import pytest

from raysys.actors.embedding import TextEncoder
from raysys.models.precision import cpu_has_fast_bf16, pick_precision

TEXTS = [
    "I was charged twice for the same card payment",
    "How long does an international transfer take?",
    "hello",
    "The savings account pays a variable interest rate, reviewed every month, and fees are listed in "
    "the tariff; an overdraft above the agreed limit is declined unless the customer asks for a review.",
] * 5


@pytest.fixture(scope="module")
def encoders():
    return TextEncoder(device="cpu", precision="float32"), TextEncoder(device="cpu", precision="bfloat16")


def test_auto_precision_follows_the_cpu():
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    assert cpu_has_fast_bf16() == bool(flags & {"amx_bf16", "avx512_bf16"})
    assert pick_precision("cpu") == ("bfloat16" if cpu_has_fast_bf16() else "float32")
    assert pick_precision("cpu", "float32") == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        pick_precision("cpu", "int4")


def test_bf16_vectors_match_float32(encoders):
    """The bfloat16 path (the default on this CPU when it has AMX/AVX512-BF16) gives the float32 vectors."""
    fp32, bf16 = encoders
    assert fp32.precision == "float32" and bf16.precision == "bfloat16"
    a, b = fp32.encode(TEXTS), bf16.encode(TEXTS)
    for v in (a, b):
        assert v.dtype == np.float32 and v.shape == (len(TEXTS), 384)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(a * b, axis=1)
    assert cosine.min() > 0.999
    # Identical texts in different batches (other padding) agree to bfloat16 rounding; similarities too.
    np.testing.assert_allclose(b[:4], b[4:8], atol=3e-3)
    np.testing.assert_allclose(a[:4] @ a[:4].T, b[:4] @ b[:4].T, atol=5e-3)
    if cpu_has_fast_bf16():
        auto = TextEncoder(fp32.model_name, device="cpu")
        assert auto.precision == "bfloat16" and auto.batch_size == 16
        assert np.sum(auto.encode(TEXTS[:4]) * a[:4], axis=1).min() > 0.999
    assert bf16.encode([]).shape == (0, 384)
