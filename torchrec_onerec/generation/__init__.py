"""Constrained beam search over whole sessions (docs/METHOD.md section 2, serving)."""

from torchrec_onerec.generation.beam_search import BeamSearchOutput, constrained_beam_search
from torchrec_onerec.generation.processors import (BeamState, BlockedItemsProcessor, LogitsProcessor,
                                                   ValidCodeProcessor)

__all__ = ["BeamSearchOutput", "BeamState", "BlockedItemsProcessor", "LogitsProcessor", "ValidCodeProcessor",
           "constrained_beam_search"]
