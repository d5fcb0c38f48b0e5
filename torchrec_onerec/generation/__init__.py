"""Constrained beam search and sampling over whole sessions (docs/METHOD.md section 2, serving)."""

from torchrec_onerec.generation.beam_search import BeamSearchOutput, constrained_beam_search
from torchrec_onerec.generation.processors import BeamState, BlockedItemsProcessor, LogitsProcessor, ValidCodeProcessor
from torchrec_onerec.generation.sampling import constrained_sample

__all__ = [
    "BeamSearchOutput",
    "BeamState",
    "BlockedItemsProcessor",
    "LogitsProcessor",
    "ValidCodeProcessor",
    "constrained_beam_search",
    "constrained_sample",
]
