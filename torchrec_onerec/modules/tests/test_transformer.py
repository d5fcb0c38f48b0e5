"""Tests of the encoder/decoder stacks: padding and causal invariance, KV-cache decoding, dense ablation."""

from __future__ import annotations

import torch

from torchrec_onerec.modules.transformer import (
    DecoderConfig,
    EncoderConfig,
    TransformerDecoder,
    TransformerEncoder,
    is_prefix_mask,
)

D = 8


def _decoder(use_moe: bool = True) -> TransformerDecoder:
    torch.manual_seed(0)
    return TransformerDecoder(
        DecoderConfig(
            d_model=D,
            num_heads=2,
            num_layers=2,
            ffn_hidden=16,
            use_moe=use_moe,
            num_experts=4,
            top_k=2,
            expert_hidden=8,
        )
    ).eval()


def test_encoder_ignores_padding_tokens() -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(EncoderConfig(d_model=D, num_heads=2, num_layers=2, ffn_hidden=16)).eval()
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[True, True, True, False, False], [True, True, False, False, False]])
    noisy = torch.where(mask.unsqueeze(-1), x, torch.randn_like(x))
    torch.testing.assert_close(encoder(x, mask)[mask], encoder(noisy, mask)[mask])


def test_eval_runs_the_ffn_on_real_tokens_only_and_gives_the_padded_result() -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(EncoderConfig(d_model=D, num_heads=2, num_layers=2, ffn_hidden=16))
    x = torch.randn(3, 6, D)
    mask = torch.arange(6) < torch.tensor([[6], [2], [1]])
    padded = encoder.train()(x, mask)  # dropout 0: training mode is the padded reference
    rows = []
    handle = encoder.blocks[0].ffn.fc.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    packed = encoder.eval()(x, mask)
    handle.remove()
    assert rows == [int(mask.sum())]  # the first block's FFN saw the 9 real tokens, not 18
    torch.testing.assert_close(packed[mask], padded[mask], rtol=0, atol=1e-6)


def test_decoder_is_causal_and_ignores_memory_padding() -> None:
    decoder = _decoder()
    memory = torch.randn(2, 4, D)
    memory_mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    x = torch.randn(2, 6, D)
    out = decoder(x, decoder.project_memory(memory), memory_mask).hidden
    later = x.clone()
    later[:, 3:] = torch.randn(2, 3, D)
    torch.testing.assert_close(decoder(later, decoder.project_memory(memory), memory_mask).hidden[:, :3], out[:, :3])
    padded = torch.where(memory_mask.unsqueeze(-1), memory, torch.randn_like(memory))
    torch.testing.assert_close(decoder(x, decoder.project_memory(padded), memory_mask).hidden, out)


def test_kv_cache_decoding_equals_full_decoding() -> None:
    for use_moe in (True, False):
        decoder = _decoder(use_moe)
        memory = decoder.project_memory(torch.randn(2, 3, D))
        memory_mask = torch.ones(2, 3, dtype=torch.bool)
        x = torch.randn(2 * 3, 5, D)  # 3 beams per user share the memory
        full = decoder(x, memory, memory_mask).hidden
        cache = decoder.new_cache(6, 5, dtype=torch.float32, device=torch.device("cpu"))
        steps = [decoder(x[:, s:e], memory, memory_mask, cache=cache).hidden for s, e in ((0, 1), (1, 3), (3, 5))]
        assert cache.length == 5
        torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_decoder_reports_balance_loss_and_load_per_layer() -> None:
    decoder = _decoder()
    memory_mask = torch.ones(2, 3, dtype=torch.bool)
    out = decoder(
        torch.randn(2, 4, D),
        decoder.project_memory(torch.randn(2, 3, D)),
        memory_mask,
        mask=torch.tensor([[True] * 4, [True, True, False, False]]),
    )
    assert out.expert_load.shape == (2, 4) and out.aux_loss.item() > 0
    torch.testing.assert_close(out.expert_load.sum(dim=1), torch.ones(2))
    dense = _decoder(use_moe=False)
    out = dense(torch.randn(2, 4, D), dense.project_memory(torch.randn(2, 3, D)), torch.ones(2, 3, dtype=torch.bool))
    assert out.aux_loss.item() == 0.0 and out.expert_load.shape == (2, 1)


def test_eval_encodes_rows_in_groups_of_similar_length_and_matches_the_padded_stack() -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(EncoderConfig(d_model=D, num_heads=2, num_layers=2, ffn_hidden=16)).eval()
    lengths = torch.tensor([[7], [1], [3], [7], [2], [5]])
    x, mask = torch.randn(6, 9, D), torch.arange(9) < lengths  # nobody is 9 long: the last columns are padding
    seen = []
    handle = encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:2]))
    grouped = encoder.forward_by_length(x, mask, rows_per_group=2)
    handle.remove()
    # rows sorted by length (1, 2 | 3, 5 | 7, 7), each pair cut to its longer row
    assert seen == [torch.Size([2, 2]), torch.Size([2, 5]), torch.Size([2, 7])]
    padded = encoder.padded_forward(x, mask)
    torch.testing.assert_close(grouped[mask], padded[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(encoder(x, mask)[mask], padded[mask], rtol=0, atol=1e-5)  # eval's default path


def test_the_encoder_keeps_the_padded_path_for_masks_that_are_not_prefixes_and_in_training() -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(EncoderConfig(d_model=D, num_heads=2, num_layers=1, ffn_hidden=16))
    x = torch.randn(2, 4, D)
    holes = torch.tensor([[True, False, True, False], [True, True, True, True]])
    assert not is_prefix_mask(holes) and is_prefix_mask(torch.tensor([[True, False], [False, False]]))
    seen = []
    encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[:2])))
    torch.testing.assert_close(encoder.eval()(x, holes), encoder.padded_forward(x, holes))
    encoder.train()(x, torch.tensor([[True, False, False, False]] * 2))
    assert seen == [(2, 4), (2, 4), (2, 4)]  # never cut
