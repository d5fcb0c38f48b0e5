"""The OneRec encoder-decoder, its config, named sizes and train wrapper (docs/METHOD.md section 2)."""

from torchrec_onerec.models.config import MODEL_SIZES, OneRecModelConfig, model_size
from torchrec_onerec.models.onerec import OneRecModel, OneRecOutput, OneRecTrainModule, count_parameters

__all__ = [
    "MODEL_SIZES",
    "OneRecModel",
    "OneRecModelConfig",
    "OneRecOutput",
    "OneRecTrainModule",
    "count_parameters",
    "model_size",
]
