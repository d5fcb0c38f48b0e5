"""Learning-rate schedule of OneRec training: linear warm-up, then cosine or linear decay to a floor.

One multiplier scales both peak learning rates (the dense AdamW one and the fused sparse one): TorchRec's fused
table optimisers read ``param_groups[0]["lr"]`` at every ``zero_grad``/``step``, so setting the group's rate
before a step is how a schedule reaches them.
"""

from __future__ import annotations

import math

from torchrec_onerec.optim_config import LR_DECAYS


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, decay: str, min_ratio: float) -> float:
    """The factor on the peak learning rate at optimiser step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, so the first step is not
    wasted at 0 and the last warm-up step is at the peak. Decay: over the remaining steps, reaching
    ``min_ratio`` at the last step ``total_steps - 1``; flat at ``min_ratio`` after that.

    Args:
        step (int): 0-based optimiser step.
        total_steps (int): steps the schedule spans (>= 1).
        warmup_steps (int): linear warm-up length (0 = none).
        decay (str): ``cosine``, ``linear`` or ``constant``.
        min_ratio (float): the floor of the decay, in [0, 1].

    Returns:
        float: in [min_ratio, 1] after the warm-up, in (0, 1] during it.

    Example:
        >>> [round(lr_multiplier(s, total_steps=6, warmup_steps=2, decay="linear", min_ratio=0.0), 2)
        ...  for s in range(7)]
        [0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
        >>> lr_multiplier(3, total_steps=10, warmup_steps=0, decay="constant", min_ratio=0.1)
        1.0
    """
    if total_steps < 1 or warmup_steps < 0 or step < 0:
        raise ValueError(
            f"need total_steps >= 1, warmup_steps >= 0 and step >= 0, got {total_steps}, {warmup_steps}, {step}"
        )
    if decay not in LR_DECAYS:
        raise ValueError(f"decay={decay!r} must be one of {list(LR_DECAYS)}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio={min_ratio} must lie in [0, 1]")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step + 1 - warmup_steps) / max(1, total_steps - warmup_steps))
    if decay == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
