"""Pre-norm transformer encoder and MoE decoder of OneRec (docs/METHOD.md section 2).

- Encoder block: x + SelfAttention(LN(x)) (fully visible, padding mask), then x + FFN(LN(x)).
- Decoder block: x + CausalSelfAttention(LN(x)) (optionally through a ``KVCache``), then
  x + CrossAttention(LN(x), encoder output), then x + MoE(LN(x)) (or a dense FFN when ``use_moe`` is off).
Each stack ends with a LayerNorm. The decoder sums its layers' balance losses (mean over layers) and stacks
their expert loads for logging.

Shape legend: B batch, T tokens, S memory tokens, D width, E experts, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple, cast

import torch
from torch import nn

from torchrec_onerec.modules.attention import AttentionConfig, CrossAttention, SelfAttention
from torchrec_onerec.modules.feed_forward import FeedForward, FeedForwardConfig, FeedForwardOutput
from torchrec_onerec.modules.kv_cache import KVCache
from torchrec_onerec.modules.moe import MoEConfig, MoEFeedForward

MemoryKV = List[Tuple[torch.Tensor, torch.Tensor]]


@dataclass
class EncoderConfig:
    """Sizes of the encoder stack.

    Args:
        d_model: D.
        num_heads: H.
        num_layers: blocks.
        ffn_hidden: inner width of each block's FFN.
        dropout: dropout in attention and FFN (training only).
        causal: each token sees only itself and the tokens before it (SASRec's history encoder); with padding at
            the end of each row, no key mask is then needed.
    """

    d_model: int
    num_heads: int
    num_layers: int
    ffn_hidden: int
    dropout: float = 0.0
    causal: bool = False

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers} must be >= 1")
        self.attention()  # validates D, H and dropout
        self.feed_forward()

    def attention(self) -> AttentionConfig:
        """The self-attention sub-config."""
        return AttentionConfig(self.d_model, self.num_heads, self.dropout, causal=self.causal)

    def feed_forward(self) -> FeedForwardConfig:
        """The FFN sub-config."""
        return FeedForwardConfig(self.d_model, self.ffn_hidden, self.dropout)


@dataclass
class DecoderConfig:
    """Sizes of the decoder stack.

    Args:
        d_model: D.
        num_heads: H.
        num_layers: blocks.
        ffn_hidden: inner width of the dense FFN (used when ``use_moe`` is False).
        dropout: dropout in attention and feed-forward layers (training only).
        use_moe: Mixture-of-Experts feed-forward layers (the paper's); False = dense FFN, for ablation.
        num_experts: E.
        top_k: experts per token.
        expert_hidden: inner width of each expert.
    """

    d_model: int
    num_heads: int
    num_layers: int
    ffn_hidden: int
    dropout: float = 0.0
    use_moe: bool = True
    num_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 256

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers} must be >= 1")
        self.attention(causal=True)  # validates D, H and dropout
        if self.use_moe:
            self.moe()
        else:
            self.feed_forward()

    def attention(self, *, causal: bool) -> AttentionConfig:
        """The self-attention (causal) or cross-attention sub-config."""
        return AttentionConfig(self.d_model, self.num_heads, self.dropout, causal=causal)

    def feed_forward(self) -> FeedForwardConfig:
        """The dense FFN sub-config."""
        return FeedForwardConfig(self.d_model, self.ffn_hidden, self.dropout)

    def moe(self) -> MoEConfig:
        """The MoE sub-config."""
        return MoEConfig(self.d_model, self.num_experts, self.top_k, self.expert_hidden, self.dropout)


class EncoderBlock(nn.Module):
    """Pre-norm block: self-attention (fully visible, or causal), then a dense FFN.

    Args:
        config (EncoderConfig): D, H, FFN width, dropout.
        device (torch.device | None): where to build the parameters.

    Example:
        >>> block = EncoderBlock(EncoderConfig(d_model=8, num_heads=2, num_layers=1, ffn_hidden=16))
        >>> block(torch.randn(2, 3, 8), torch.tensor([[True] * 3, [True, False, False]])).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, config: EncoderConfig, *, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, device=device)
        self.attn = SelfAttention(config.attention(), device=device)
        self.ln_2 = nn.LayerNorm(config.d_model, device=device)
        self.ffn = FeedForward(config.feed_forward(), device=device)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """[B, T, D] tokens, [B, T] bool real-token mask (None: every key visible) -> [B, T, D].

        In eval mode with a mask the FFN runs on the real tokens only (``packed_feed_forward``): histories of
        uneven length are mostly padding, whose rows nothing reads. Training keeps the padded FFN, so that
        dropout draws as it always has.
        """
        x = x + self.attn(self.ln_1(x), key_mask=mask)
        if mask is not None and not self.training:
            return packed_feed_forward(self.ffn, self.ln_2, x, mask)
        return x + self.ffn(self.ln_2(x)).out


def packed_feed_forward(ffn: FeedForward, norm: nn.LayerNorm, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x + FFN(LN(x)) at the real tokens of ``x`` [B, T, D] (``mask`` [B, T] True), computed on those rows alone;
    padding rows keep x. Row-wise ops, so the real rows equal the padded computation's (tested).

    Example:
        >>> ffn, norm = FeedForward(FeedForwardConfig(d_model=4, hidden=8)), nn.LayerNorm(4)
        >>> x, mask = torch.randn(2, 3, 4), torch.tensor([[True, True, False], [True, False, False]])
        >>> torch.allclose(packed_feed_forward(ffn, norm, x, mask)[mask], (x + ffn(norm(x)).out)[mask])
        True
    """
    real = x[mask]  # (N, D), row-major: the order masked_scatter fills
    return x.masked_scatter(mask.unsqueeze(-1).expand_as(x), real + ffn(norm(real)).out)


# rows encoded together by ``TransformerEncoder.forward_by_length``: enough for the matrix products to stay
# efficient, few enough that a sorted batch's groups are close to their own lengths (B = 256: 8 groups)
ROWS_PER_LENGTH_GROUP = 32


def is_prefix_mask(mask: torch.Tensor) -> bool:
    """Whether every row of a [B, T] bool mask is True on a prefix and False after it.

    Example:
        >>> is_prefix_mask(torch.tensor([[True, True, False], [True, False, False]]))
        True
        >>> is_prefix_mask(torch.tensor([[True, False, True]]))
        False
    """
    positions = torch.arange(mask.shape[1], device=mask.device)
    return bool(torch.equal(mask, positions < mask.sum(dim=1, keepdim=True)))


class TransformerEncoder(nn.Module):
    """A stack of ``EncoderBlock`` and a final LayerNorm.

    Args:
        config (EncoderConfig): sizes.
        device (torch.device | None): where to build the parameters.

    Example:
        >>> enc = TransformerEncoder(EncoderConfig(d_model=8, num_heads=2, num_layers=2, ffn_hidden=16))
        >>> enc(torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, config: EncoderConfig, *, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(config, device=device) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model, device=device)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Encode.

        In eval mode, when each row's real tokens come first (the mask ``SemanticTokenEmbedding`` builds), rows are
        encoded in groups of similar length, each cut to its longest row (``forward_by_length``): histories of
        uneven length are mostly padding, and attention's cost grows with the square of the padded length.
        Under torch.fx tracing (which cannot branch on data) it keeps the padded path.

        Args:
            x (torch.Tensor): [B, T, D] tokens.
            mask (torch.Tensor | None): [B, T] bool, False at padding (no token attends to it); None: no padding
                to hide (or, with ``causal``, padding only after each row's real tokens).

        Returns:
            torch.Tensor: [B, T, D] (rows at padding positions are meaningless).
        """
        traced = isinstance(mask, torch.fx.Proxy)  # torch.fx (a train pipeline) cannot branch on the lengths
        if mask is not None and not self.training and not traced and is_prefix_mask(mask):
            return self.forward_by_length(x, mask)
        return self.padded_forward(x, mask)

    def padded_forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Every row at the full length T: the plain reference of ``forward_by_length`` (and training's path)."""
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)

    def forward_by_length(
        self, x: torch.Tensor, mask: torch.Tensor, *, rows_per_group: int = ROWS_PER_LENGTH_GROUP
    ) -> torch.Tensor:
        """``padded_forward`` with the rows sorted by length and encoded ``rows_per_group`` at a time, each group
        cut to its longest row (padding positions are as meaningless as in ``padded_forward``). ``mask`` must be a
        prefix mask (``is_prefix_mask``). Attention never mixes rows and masks padded keys, so the real positions
        equal the padded computation's up to float rounding (tested).

        Example:
            >>> enc = TransformerEncoder(EncoderConfig(d_model=8, num_heads=2, num_layers=1, ffn_hidden=16)).eval()
            >>> x, mask = torch.randn(3, 4, 8), torch.arange(4) < torch.tensor([[4], [1], [2]])
            >>> grouped = enc.forward_by_length(x, mask, rows_per_group=1)  # three groups of one row
            >>> torch.allclose(grouped[mask], enc.padded_forward(x, mask)[mask], atol=1e-6)
            True
        """
        lengths = mask.sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        out = torch.zeros_like(x)
        for rows in order.split(rows_per_group):
            longest = int(lengths[rows[-1]])  # sorted ascending: the group's last row is its longest
            out[rows, :longest] = self.padded_forward(x[rows, :longest], mask[rows, :longest])
        return out


class DecoderBlock(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the memory, then MoE (or dense) FFN.

    Args:
        config (DecoderConfig): sizes.
        device (torch.device | None): where to build the parameters.

    Example:
        >>> block = DecoderBlock(DecoderConfig(d_model=8, num_heads=2, num_layers=1, ffn_hidden=16, num_experts=3))
        >>> memory_kv = block.cross_attn.project_memory(torch.randn(2, 4, 8))
        >>> out = block(torch.randn(2, 3, 8), memory_kv, torch.ones(2, 4, dtype=torch.bool))
        >>> tuple(out.out.shape), tuple(out.expert_load.shape)
        ((2, 3, 8), (3,))
    """

    def __init__(self, config: DecoderConfig, *, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, device=device)
        self.self_attn = SelfAttention(config.attention(causal=True), device=device)
        self.ln_2 = nn.LayerNorm(config.d_model, device=device)
        self.cross_attn = CrossAttention(config.attention(causal=False), device=device)
        self.ln_3 = nn.LayerNorm(config.d_model, device=device)
        self.ffn: nn.Module = (
            MoEFeedForward(config.moe(), device=device)
            if config.use_moe
            else FeedForward(config.feed_forward(), device=device)
        )

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: Tuple[torch.Tensor, torch.Tensor],
        memory_mask: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        layer: int = 0,
    ) -> FeedForwardOutput:
        """One decoder layer; see ``TransformerDecoder.forward`` for the arguments. Returns out [B, T, D]."""
        x = x + self.self_attn(self.ln_1(x), cache=cache, layer=layer)
        x = x + self.cross_attn(self.ln_2(x), memory_kv, memory_mask)
        ffn = self.ffn(self.ln_3(x), mask)
        return FeedForwardOutput(x + ffn.out, ffn.aux_loss, ffn.expert_load)


class DecoderOutput(NamedTuple):
    """What the decoder returns.

    Args:
        hidden (torch.Tensor): [B, T, D] final hidden states.
        aux_loss (torch.Tensor): [] mean over layers of the MoE balance loss (0 for dense layers).
        expert_load (torch.Tensor): [layers, E] share of assignments per expert in each layer.
    """

    hidden: torch.Tensor
    aux_loss: torch.Tensor
    expert_load: torch.Tensor


class TransformerDecoder(nn.Module):
    """A stack of ``DecoderBlock`` and a final LayerNorm; memory K/V projected once, self-attention cacheable.

    Args:
        config (DecoderConfig): sizes.
        device (torch.device | None): where to build the parameters.

    Example:
        >>> dec = TransformerDecoder(DecoderConfig(d_model=8, num_heads=2, num_layers=2, ffn_hidden=16,
        ...                                        num_experts=4, expert_hidden=8))
        >>> memory_kv = dec.project_memory(torch.randn(2, 3, 8))
        >>> out = dec(torch.randn(2, 4, 8), memory_kv, torch.ones(2, 3, dtype=torch.bool))
        >>> tuple(out.hidden.shape), tuple(out.expert_load.shape)
        ((2, 4, 8), (2, 4))
    """

    def __init__(self, config: DecoderConfig, *, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(DecoderBlock(config, device=device) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model, device=device)

    def project_memory(self, memory: torch.Tensor, mask: Optional[torch.Tensor] = None) -> MemoryKV:
        """Every layer's cross-attention keys/values of the [B, S, D] encoder output, each [B, H, S, D / H]; with
        the [B, S] ``mask``, of its real tokens only (zeros at padding: searches, which project a memory once)."""
        return [cast(DecoderBlock, block).cross_attn.project_memory(memory, mask) for block in self.blocks]

    def new_cache(self, batch_size: int, max_length: int, *, dtype: torch.dtype, device: torch.device) -> KVCache:
        """An empty self-attention cache for ``batch_size`` rows of up to ``max_length`` tokens."""
        H = self.config.num_heads
        return KVCache(
            self.config.num_layers, batch_size, H, max_length, self.config.d_model // H, dtype=dtype, device=device
        )

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: MemoryKV,
        memory_mask: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
    ) -> DecoderOutput:
        """Decode.

        Args:
            x (torch.Tensor): [B * G, T, D] decoder tokens (G >= 1 consecutive rows per memory row, e.g. beams).
            memory_kv (MemoryKV): ``project_memory`` output of the [B, S, D] memory.
            memory_mask (torch.Tensor): [B, S] bool, False at padding memory tokens.
            mask (torch.Tensor | None): [B * G, T] bool real tokens, only for the MoE balance loss and load
                (padding must trail, so causal attention already keeps it from real tokens).
            cache (KVCache | None): self-attention cache; the T tokens follow the ``cache.length`` cached ones,
                and the cache is advanced by T.

        Returns:
            DecoderOutput: hidden [B * G, T, D], aux_loss [], expert_load [layers, E].
        """
        aux_losses, loads = [], []
        for layer, block in enumerate(self.blocks):
            x, aux_loss, load = block(x, memory_kv[layer], memory_mask, mask, cache, layer)
            aux_losses.append(aux_loss)
            loads.append(load)
        if cache is not None:
            cache.advance(x.shape[1])
        return DecoderOutput(self.ln_f(x), torch.stack(aux_losses).mean(), torch.stack(loads))
