"""Tests of attention: SDPA path vs the explicit reference, padding and causal masks, KV cache, shared memory."""

from __future__ import annotations

import pytest
import torch

from torchrec_onerec.modules.attention import (
    AttentionConfig,
    CrossAttention,
    SelfAttention,
    attend,
    causal_mask,
    reference_attention,
)
from torchrec_onerec.modules.kv_cache import KVCache

D, H = 8, 2


def test_sdpa_matches_reference_with_padding_and_causal_masks() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(3, H, 5, 4), torch.randn(3, H, 6, 4), torch.randn(3, H, 6, 4)
    mask = torch.rand(3, 1, 1, 6) > 0.4
    mask[..., 0] = True  # every row keeps one key
    torch.testing.assert_close(attend(q, k, v, mask), reference_attention(q, k, v, mask))
    qs = torch.randn(3, H, 6, 4)
    torch.testing.assert_close(attend(qs, k, v, causal=True), reference_attention(qs, k, v, causal_mask(6, 6)))


def test_padded_tokens_do_not_change_real_outputs() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(AttentionConfig(D, H))
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
    noisy = torch.where(mask.unsqueeze(-1), x, torch.randn_like(x) * 10)
    torch.testing.assert_close(attn(x, key_mask=mask)[mask], attn(noisy, key_mask=mask)[mask])


def test_causal_outputs_ignore_later_tokens() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(AttentionConfig(D, H, causal=True))
    x = torch.randn(2, 6, D)
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, D)
    torch.testing.assert_close(attn(x)[:, :4], attn(changed)[:, :4])
    assert not torch.allclose(attn(x)[:, 4:], attn(changed)[:, 4:])


def test_kv_cache_steps_equal_full_causal_attention() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(AttentionConfig(D, H, causal=True))
    x = torch.randn(2, 5, D)
    cache = KVCache(1, 2, H, 5, D // H)
    outs = []
    for start, end in ((0, 1), (1, 3), (3, 4), (4, 5)):  # one- and two-token steps
        outs.append(attn(x[:, start:end], cache=cache))
        cache.advance(end - start)
    torch.testing.assert_close(torch.cat(outs, dim=1), attn(x))
    with pytest.raises(ValueError, match="max_length"):
        attn(x[:, :1], cache=cache)


def test_cross_attention_shares_memory_across_beams() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(AttentionConfig(D, H))
    memory, mask = torch.randn(2, 4, D), torch.tensor([[True] * 4, [True, True, False, False]])
    x = torch.randn(2 * 3, 2, D)  # 3 beams per user
    shared = attn(x, attn.project_memory(memory), mask)
    repeated = attn(x, attn.project_memory(memory.repeat_interleave(3, 0)), mask.repeat_interleave(3, 0))
    torch.testing.assert_close(shared, repeated)


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="divide d_model"):
        AttentionConfig(d_model=10, num_heads=3)
    with pytest.raises(ValueError, match="causal=False"):
        CrossAttention(AttentionConfig(D, H, causal=True))


def test_projecting_the_real_memory_tokens_only_gives_the_full_projection_there_and_zeros_at_padding() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(AttentionConfig(d_model=D, num_heads=H))
    memory = torch.randn(3, 5, D)
    mask = torch.arange(5) < torch.tensor([[5], [2], [1]])
    rows = []
    handle = attn.kv.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    packed = attn.project_memory(memory, mask)
    handle.remove()
    full = attn.project_memory(memory)
    assert rows == [8]  # the real tokens, not all 15
    for got, want in zip(packed, full):
        assert got.shape == want.shape == (3, H, 5, D // H)
        torch.testing.assert_close(got.transpose(1, 2)[mask], want.transpose(1, 2)[mask], rtol=0, atol=1e-6)
        assert (got.transpose(1, 2)[~mask] == 0).all()
    queries = torch.randn(6, 1, D)  # two beams per user: attention reads the same values either way
    torch.testing.assert_close(attn(queries, packed, mask), attn(queries, full, mask), rtol=0, atol=1e-6)
