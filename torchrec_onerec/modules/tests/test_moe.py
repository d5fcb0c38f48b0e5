"""Tests of the MoE layer: top-k routing, the balance loss on hand cases, dispatch vs a per-token loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchrec_onerec.modules.moe import MoEConfig, MoEFeedForward, fused_dispatch_default, grouped_expert_forward


def _reference(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Per-token, per-choice loop: sum_k gate_k * expert_{e_k}(x_t)."""
    tokens = x.reshape(-1, x.shape[-1])
    _, index, gates = moe.route(tokens)
    out = torch.zeros_like(tokens)
    for t in range(tokens.shape[0]):
        for choice in range(index.shape[1]):
            e = int(index[t, choice])
            hidden = F.gelu(tokens[t] @ moe.w_in[e] + moe.b_in[e])
            out[t] += gates[t, choice] * (hidden @ moe.w_out[e] + moe.b_out[e])
    return out.view_as(x)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_dispatch_equals_per_token_loop(top_k: int) -> None:
    torch.manual_seed(top_k)
    moe = MoEFeedForward(MoEConfig(d_model=6, num_experts=4, top_k=top_k, expert_hidden=5))
    x = torch.randn(3, 7, 6)
    torch.testing.assert_close(moe(x).out, _reference(moe, x))


def test_routing_picks_top_k_and_gates_sum_to_one() -> None:
    torch.manual_seed(0)
    moe = MoEFeedForward(MoEConfig(d_model=6, num_experts=5, top_k=2, expert_hidden=4))
    probs, index, gates = moe.route(torch.randn(10, 6))
    assert torch.equal(index, probs.argsort(dim=1, descending=True)[:, :2])
    torch.testing.assert_close(gates.sum(dim=1), torch.ones(10))
    switch = MoEFeedForward(MoEConfig(d_model=6, num_experts=5, top_k=1, expert_hidden=4))
    _, _, single = switch.route(torch.randn(4, 6))
    assert (single < 1).all()  # top-1 keeps the raw probability (Switch), so the router gets a gradient


def test_balance_loss_hand_cases() -> None:
    moe = MoEFeedForward(MoEConfig(d_model=2, num_experts=2, top_k=1, expert_hidden=2))
    with torch.no_grad():
        moe.router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    x = torch.tensor([[[torch.log(torch.tensor(3.0)).item(), 0.0]] * 4])  # p = (0.75, 0.25) for every token
    out = moe(x)
    # every token picks expert 0: f = (1, 0), P = (0.75, 0.25) -> 2 * (1 * 0.75) = 1.5
    torch.testing.assert_close(out.aux_loss, torch.tensor(1.5))
    torch.testing.assert_close(out.expert_load, torch.tensor([1.0, 0.0]))
    with torch.no_grad():
        moe.router.weight.zero_()  # uniform probabilities: P = (0.5, 0.5), and f sums to 1 -> loss 1
    assert moe(x).aux_loss.item() == pytest.approx(1.0)


def test_padding_is_left_out_of_load_and_loss() -> None:
    torch.manual_seed(0)
    moe = MoEFeedForward(MoEConfig(d_model=4, num_experts=3, top_k=1, expert_hidden=4))
    x = torch.randn(1, 6, 4)
    mask = torch.tensor([[True, True, True, False, False, False]])
    noisy = torch.cat([x[:, :3], torch.randn(1, 3, 4) * 5], dim=1)
    a, b = moe(x, mask), moe(noisy, mask)
    torch.testing.assert_close(a.aux_loss, b.aux_loss)
    torch.testing.assert_close(a.expert_load, b.expert_load)
    torch.testing.assert_close(a.out[mask], b.out[mask])


def test_gradients_reach_router_and_experts() -> None:
    moe = MoEFeedForward(MoEConfig(d_model=4, num_experts=3, top_k=2, expert_hidden=4))
    out = moe(torch.randn(2, 3, 4))
    (out.out.sum() + out.aux_loss).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moe.parameters())


def test_fx_traces_through_the_wrapped_dispatch() -> None:
    moe = MoEFeedForward(MoEConfig(d_model=4, num_experts=3, top_k=2, expert_hidden=4))
    traced = torch.fx.symbolic_trace(moe)  # the mask is traced as an input
    x, mask = torch.randn(2, 3, 4), torch.tensor([[True] * 3, [True, False, False]])
    torch.testing.assert_close(traced(x, mask).out, moe(x, mask).out)
    torch.testing.assert_close(traced(x, mask).aux_loss, moe(x, mask).aux_loss)
    assert any(n.target.__name__ == "grouped_expert_forward" for n in traced.graph.nodes if n.op == "call_function")


def _dispatch_inputs(seed: int) -> tuple:
    """Tokens, choices (expert 3 of 4 never chosen: an empty block), gates and expert weights."""
    torch.manual_seed(seed)
    E, D, H, N, k = 4, 8, 16, 13, 2
    weights = [torch.randn(E, D, H), torch.randn(E, H), torch.randn(E, H, D), torch.randn(E, D)]
    return torch.randn(N, D), torch.randint(0, E - 1, (N, k)), torch.rand(N, k), weights


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="this torch has no torch._grouped_mm")
def test_fused_dispatch_equals_the_per_expert_loop() -> None:
    x, index, gates, weights = _dispatch_inputs(0)
    leaves = [x, *weights]
    for tensor in leaves:
        tensor.requires_grad_(True)
    upstream = torch.randn(x.shape)
    results = []
    for fused in (False, True):
        out = grouped_expert_forward(x, index, gates, weights, fused=fused)
        grads = torch.autograd.grad(out, leaves, upstream)
        results.append((out, grads))
    torch.testing.assert_close(results[1][0], results[0][0])
    for fused_grad, loop_grad in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(fused_grad, loop_grad)


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="this torch has no torch._grouped_mm")
def test_fused_dispatch_under_bf16_autocast_stays_close() -> None:
    x, index, gates, weights = _dispatch_inputs(1)
    exact = grouped_expert_forward(x, index, gates, weights, fused=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = grouped_expert_forward(x, index, gates, weights, fused=True)
    assert fused.dtype == torch.float32  # the gates (float32) weight the bf16 expert outputs
    assert ((fused - exact).abs().max() / exact.abs().max()).item() < 0.02


def test_fused_dispatch_is_the_default_only_on_cuda_in_bf16() -> None:
    assert not fused_dispatch_default(torch.zeros(2, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_dispatch_default(torch.zeros(2, 3))  # CPU keeps the loop and its float32 figures
    if torch.cuda.is_available() and hasattr(torch, "_grouped_mm"):
        assert not fused_dispatch_default(torch.zeros(2, 3, device="cuda"))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert fused_dispatch_default(torch.zeros(2, 3, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fused_dispatch_matches_the_loop_in_bf16() -> None:
    x, index, gates, weights = _dispatch_inputs(2)
    x, index, gates, weights = x.cuda(), index.cuda(), gates.cuda(), [w.cuda() for w in weights]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loop = grouped_expert_forward(x, index, gates, weights, fused=False)
        fused = grouped_expert_forward(x, index, gates, weights)
    assert ((fused - loop).abs().max() / loop.abs().max()).item() < 0.02


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="top_k=3"):
        MoEConfig(d_model=4, num_experts=2, top_k=3)
