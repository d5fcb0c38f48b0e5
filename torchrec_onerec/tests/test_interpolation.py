"""Weight interpolation between two models' state dicts (``interpolation.interpolate_states``)."""

from __future__ import annotations

import pytest
import torch

from torchrec_onerec.interpolation import interpolate_states
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel


def _states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    first = OneRecModel(model_size("tiny"), [4, 3]).state_dict()
    torch.manual_seed(1)
    return first, OneRecModel(model_size("tiny"), [4, 3]).state_dict()


def test_the_ends_are_the_two_models_exactly_and_the_middle_is_their_mean() -> None:
    first, last = _states()
    start, end, middle = (interpolate_states(first, last, w) for w in (0.0, 1.0, 0.5))
    for key in first:
        assert torch.equal(start[key], first[key]) and torch.equal(end[key], last[key]), key
        torch.testing.assert_close(middle[key], (first[key] + last[key]) / 2, msg=key)


def test_the_table_weights_move_along_the_line_too() -> None:
    first, last = _states()
    key = next(k for k in first if k.startswith("embedding.ec."))
    out = interpolate_states(first, last, 0.25)[key]
    torch.testing.assert_close(out, 0.75 * first[key] + 0.25 * last[key])


def test_refuses_weights_off_the_segment_and_other_models() -> None:
    first, last = _states()
    with pytest.raises(ValueError, match=r"weight=1.5 must lie in \[0, 1\]"):
        interpolate_states(first, last, 1.5)
    with pytest.raises(ValueError, match="only in the first"):
        interpolate_states(first, {k: v for k, v in last.items() if k != "embedding.bos"}, 0.5)
    other = OneRecModel(model_size("tiny"), [5, 3]).state_dict()
    with pytest.raises(ValueError, match="has shape"):
        interpolate_states(first, other, 0.5)
