"""Building blocks of the OneRec model (docs/METHOD.md section 2): semantic-ID embedding, attention, MoE, blocks."""

from torchrec_onerec.modules.attention import AttentionConfig, CrossAttention, SelfAttention, reference_attention
from torchrec_onerec.modules.embedding import SemanticEmbeddingConfig, SemanticTokenEmbedding
from torchrec_onerec.modules.feed_forward import FeedForward, FeedForwardConfig, FeedForwardOutput
from torchrec_onerec.modules.kv_cache import KVCache
from torchrec_onerec.modules.moe import MoEConfig, MoEFeedForward
from torchrec_onerec.modules.transformer import DecoderConfig, EncoderConfig, TransformerDecoder, TransformerEncoder

__all__ = [
    "AttentionConfig",
    "CrossAttention",
    "DecoderConfig",
    "EncoderConfig",
    "FeedForward",
    "FeedForwardConfig",
    "FeedForwardOutput",
    "KVCache",
    "MoEConfig",
    "MoEFeedForward",
    "SelfAttention",
    "SemanticEmbeddingConfig",
    "SemanticTokenEmbedding",
    "TransformerDecoder",
    "TransformerEncoder",
    "reference_attention",
]
