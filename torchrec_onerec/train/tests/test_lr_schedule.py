"""Shape of the learning-rate schedule: linear warm-up to the peak, then a monotone decay to the floor."""

from __future__ import annotations

import math

import pytest

from torchrec_onerec.train.schedule import lr_multiplier


def _curve(decay: str, total: int = 50, warmup: int = 10, floor: float = 0.1) -> list[float]:
    return [
        lr_multiplier(s, total_steps=total, warmup_steps=warmup, decay=decay, min_ratio=floor) for s in range(total + 5)
    ]


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_warmup_then_monotone_decay_to_the_floor(decay: str) -> None:
    curve = _curve(decay)
    assert curve[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert curve[9] == 1.0
    decay_part = curve[9:50]
    assert all(a >= b for a, b in zip(decay_part, decay_part[1:]))
    assert curve[49] == pytest.approx(0.1) and curve[50:] == pytest.approx([0.1] * 5)


def test_cosine_is_halfway_at_the_middle_and_constant_stays_at_the_peak() -> None:
    curve = _curve("cosine", total=21, warmup=0, floor=0.0)
    assert curve[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 21)))
    assert _curve("constant")[10:] == [1.0] * 45


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match="decay='step'"):
        lr_multiplier(0, total_steps=10, warmup_steps=0, decay="step", min_ratio=0.0)
    with pytest.raises(ValueError, match="total_steps >= 1"):
        lr_multiplier(0, total_steps=0, warmup_steps=0, decay="cosine", min_ratio=0.0)
