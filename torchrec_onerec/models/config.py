"""Schema of the OneRec encoder-decoder (docs/METHOD.md section 2) and named sizes from a test toy to ~1B parameters.

One flat dataclass so that a YAML file or a ``model.d_model=512`` override sets any size; the per-module
sub-configs (``embedding``, ``encoder``, ``decoder``) are derived from it. ``MODEL_SIZES`` names a few sizes;
``torchrec_onerec.models.onerec.count_parameters`` reports what each builds to (on the meta device, nothing
allocated).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Sequence

from torchrec_onerec.modules.embedding import HISTORY_TOKENS, SemanticEmbeddingConfig
from torchrec_onerec.modules.transformer import DecoderConfig, EncoderConfig


ITEM_HEADS = ("dense", "prefix")


@dataclass
class OneRecModelConfig:
    """Sizes and loss weights of ``OneRecModel``.

    Args:
        d_model: D, width of every token, table and layer.
        num_heads: attention heads H (must divide D).
        encoder_layers: encoder blocks.
        decoder_layers: decoder blocks.
        ffn_hidden: inner width of the encoder FFN (and of the decoder FFN when ``use_moe`` is off).
        use_moe: Mixture-of-Experts decoder FFN (the paper's); False = dense FFN, for ablation.
        num_experts: E (paper: 24).
        top_k: experts per token (paper: 2).
        expert_hidden: inner width of each expert.
        moe_aux_weight: weight of the MoE balance loss (mean over decoder layers) in the training loss.
        dropout: dropout in attention and feed-forward layers.
        max_history: n, history items read by the encoder (paper: 256).
        session_items: M, items per target/generated session (paper: 5).
        num_users: rows of the user-id table (a sparse TorchRec feature); 0 = none.
        history_tokens: how the encoder reads a history item: ``codes`` (one token per code level, n L' tokens)
            or ``items`` (the sum of its code tokens, n tokens: L' times shorter attention).
        item_head: how the last code level (the item id, with ``tokenizer.disambiguation=item``) is scored:
            ``dense``, a linear layer over all of its codes (a softmax over the catalogue, copied on every rank);
            ``prefix``, output rows in a sharded TorchRec table, scored and normalised only over the codes under
            the item's first L'-1 codes (a cluster's items), so the item level builds nothing of the catalogue's size.
    """

    d_model: int = 128
    num_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ffn_hidden: int = 512
    use_moe: bool = True
    num_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 256
    moe_aux_weight: float = 0.01
    dropout: float = 0.1
    max_history: int = 50
    session_items: int = 5
    num_users: int = 0
    history_tokens: str = "codes"
    item_head: str = "dense"

    def __post_init__(self) -> None:
        if self.moe_aux_weight < 0:
            raise ValueError(f"moe_aux_weight={self.moe_aux_weight} must be >= 0")
        if self.history_tokens not in HISTORY_TOKENS:
            raise ValueError(f"model.history_tokens={self.history_tokens!r} must be one of {list(HISTORY_TOKENS)}")
        if self.item_head not in ITEM_HEADS:
            raise ValueError(f"model.item_head={self.item_head!r} must be one of {list(ITEM_HEADS)}")
        self.encoder()  # the sub-configs validate their own fields
        self.decoder()
        self.embedding([1, 1])

    @property
    def reads_siblings(self) -> bool:
        """Whether the model's batches carry each target item's siblings (``SemanticIdTransform(siblings=...)``)."""
        return self.item_head == "prefix"

    def embedding(self, vocab_sizes: Sequence[int]) -> SemanticEmbeddingConfig:
        """The token-embedding sub-config for the codebook's per-level sizes K_l."""
        return SemanticEmbeddingConfig(
            self.d_model,
            list(vocab_sizes),
            self.max_history,
            self.session_items,
            self.num_users,
            self.history_tokens,
            item_output=self.item_head == "prefix",
        )

    def encoder(self) -> EncoderConfig:
        """The encoder sub-config."""
        return EncoderConfig(self.d_model, self.num_heads, self.encoder_layers, self.ffn_hidden, self.dropout)

    def decoder(self) -> DecoderConfig:
        """The decoder sub-config."""
        return DecoderConfig(
            self.d_model,
            self.num_heads,
            self.decoder_layers,
            self.ffn_hidden,
            self.dropout,
            self.use_moe,
            self.num_experts,
            self.top_k,
            self.expert_hidden,
        )


MODEL_SIZES: Dict[str, OneRecModelConfig] = {
    "tiny": OneRecModelConfig(
        d_model=16,
        num_heads=2,
        encoder_layers=1,
        decoder_layers=1,
        ffn_hidden=32,
        num_experts=4,
        top_k=2,
        expert_hidden=16,
        dropout=0.0,
        max_history=8,
        session_items=2,
    ),
    "default": OneRecModelConfig(),
    "1b": OneRecModelConfig(
        d_model=1024,
        num_heads=16,
        encoder_layers=8,
        decoder_layers=8,
        ffn_hidden=4096,
        num_experts=24,
        top_k=2,
        expert_hidden=2048,
        max_history=256,
        session_items=5,
    ),
}


def model_size(name: str, **overrides: Any) -> OneRecModelConfig:
    """A named size from ``MODEL_SIZES`` with optional field overrides.

    Example:
        >>> model_size("tiny", session_items=3).session_items
        3
    """
    if name not in MODEL_SIZES:
        raise ValueError(f"model size {name!r} is not one of {sorted(MODEL_SIZES)}")
    return replace(MODEL_SIZES[name], **overrides)
