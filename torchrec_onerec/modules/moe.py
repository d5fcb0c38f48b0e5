"""Sparse Mixture-of-Experts feed-forward layer of the OneRec decoder (docs/METHOD.md section 2; paper: 24 experts,
top-2 routing, with a load-balancing mechanism).

Routing: a linear router gives each token a softmax distribution p over the E experts; the token goes to its
``top_k`` most probable experts, weighted by their probabilities renormalised over the chosen ones (Mixtral)
when top_k > 1, or by the raw probability when top_k = 1 (Switch), so the router always gets a gradient from
the main loss. Dispatch is dropless: every assignment is computed (no capacity factor), by sorting the
assignments by expert and running each expert once on its contiguous block (``grouped_expert_forward``; on a
GPU in bfloat16, one ``torch._grouped_mm`` per layer of the expert MLP, which needs no host synchronisation).

Load balancing: the auxiliary loss of Switch Transformer / GShard, chosen over DeepSeek's bias-based balancing
because it needs no state updated outside the optimiser step (it works unchanged under DMP, gradient
accumulation and checkpoint resume):

    aux = E * sum_e f_e * P_e,   f_e = share of the N * top_k assignments sent to e,   P_e = mean_t p_t(e)

over the real (non-padding) tokens. It is 1 when routing is uniform and E when every token picks one expert;
the model adds ``moe_aux_weight`` times its mean over layers to the loss. ``expert_load`` (f) is returned
for logging expert utilisation.

Under data parallelism (training with W > 1 processes) f and P are those of the global batch: the ranks sum their
expert counts, token counts and router probability sums (one all-reduce per layer, no gradient), and rank r's loss
is W * E * sum_e f_e * S_re / N, with S_re its own probability sum and N the global token count. DDP averages the
ranks' gradients, so training sees the gradient of the global loss, and the ranks' mean of the loss equals it: W
processes train as one does on the same global batch (``integration_tests/test_distributed_training.py``). A
per-rank loss would be a product of per-rank averages instead, and change with the number of ranks.

Shape legend: B batch, T tokens, D width, E experts, N = B * T routed tokens.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torchrec_onerec.modules.feed_forward import FeedForwardOutput


@dataclass
class MoEConfig:
    """Sizes of a Mixture-of-Experts feed-forward layer.

    Args:
        d_model: D.
        num_experts: E.
        top_k: experts per token (1 <= top_k <= E).
        expert_hidden: inner width of each expert's GELU MLP.
        dropout: dropout on the output (training only).
    """

    d_model: int
    num_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ValueError(f"num_experts={self.num_experts} must be >= 1")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k} must lie in [1, num_experts={self.num_experts}]")
        if self.d_model < 1 or self.expert_hidden < 1:
            raise ValueError(f"d_model={self.d_model} and expert_hidden={self.expert_hidden} must both be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must lie in [0, 1)")


def fused_dispatch_default(x: torch.Tensor) -> bool:
    """Whether ``grouped_expert_forward`` uses the grouped GEMM when not told: CUDA with bfloat16 compute.

    That is where ``torch._grouped_mm`` has its fast kernel; elsewhere the per-expert loop is as fast, and on
    CPU it keeps the figures that float32 runs have always given.

    Example:
        >>> fused_dispatch_default(torch.zeros(2, 4))
        False
    """
    return x.is_cuda and hasattr(torch, "_grouped_mm") and _compute_dtype(x) == torch.bfloat16


_forced_dispatch: Optional[bool] = None
DISPATCH_MODES = {"auto": None, "loop": False}  # command-line names of ``forced_dispatch`` values (benchmarks)


@contextmanager
def forced_dispatch(fused: Optional[bool]) -> Iterator[None]:
    """Within the block, every MoE layer dispatches fused (True), by the loop (False) or by the default rule (None).

    For benchmarks and tests that compare the two ways on one model (``benchmarks/train.py --moe-dispatch``).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> moe, x = MoEFeedForward(MoEConfig(d_model=8, num_experts=3, expert_hidden=16)), torch.randn(2, 5, 8)
        >>> with forced_dispatch(False):
        ...     loop = moe(x).out
        >>> with forced_dispatch(True):
        ...     fused = moe(x).out
        >>> torch.allclose(loop, fused)
        True
    """
    global _forced_dispatch
    previous, _forced_dispatch = _forced_dispatch, fused
    try:
        yield
    finally:
        _forced_dispatch = previous


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products of ``x`` run in: autocast's when it is on for x's device, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


@torch.fx.wrap
def grouped_expert_forward(
    x: torch.Tensor,
    expert_index: torch.Tensor,
    gates: torch.Tensor,
    weights: List[torch.Tensor],
    fused: Optional[bool] = None,
) -> torch.Tensor:
    """Run every token through its chosen experts and sum the gated outputs (vectorised dispatch).

    The assignments are sorted by expert, so that each expert's tokens form one contiguous block. Two ways to
    run the blocks give the same result (``modules/tests/test_moe.py``):

    - the per-expert loop, the plain reference: one pair of matrix products per expert. The block sizes must
      reach the host (``.tolist()``), a device synchronisation per call on a GPU;
    - ``fused``: ``torch._grouped_mm``, one grouped product per layer of the expert MLP, with the block
      boundaries as a device tensor: no host synchronisation, so the host keeps queueing kernels ahead of the GPU
      during training and beam search.

    The split sizes depend on the routing (data-dependent), so fx treats this function as one leaf call.

    Args:
        x (torch.Tensor): [N, D] tokens.
        expert_index (torch.Tensor): [N, k] int64 chosen experts.
        gates (torch.Tensor): [N, k] weight of each chosen expert.
        weights (List[torch.Tensor]): ``[w_in [E, D, H], b_in [E, H], w_out [E, H, D], b_out [E, D]]``.
        fused (bool | None): use the grouped GEMM; None: as ``forced_dispatch`` says, else
            ``fused_dispatch_default(x)``.

    Returns:
        torch.Tensor: [N, D] sum over the k choices of gate * GELU-MLP_e(x).
    """
    w_in, b_in, w_out, b_out = weights
    N, D = x.shape
    k = expert_index.shape[1]
    flat = expert_index.reshape(-1)  # (N*k,) assignment a belongs to token a // k
    order = flat.argsort(stable=True)  # assignments grouped by expert
    token = order // k
    if fused is None:
        fused = fused_dispatch_default(x) if _forced_dispatch is None else _forced_dispatch
    if fused:
        dtype = _compute_dtype(x)
        expert = flat[order]  # (N*k,) the expert of each sorted assignment, ascending
        # (E,) block ends; searchsorted, unlike bincount (which reads the largest value on the host), stays on the GPU
        experts = torch.arange(w_in.shape[0], device=expert.device)
        ends = torch.searchsorted(expert, experts, right=True).to(torch.int32)
        hidden = torch._grouped_mm(x[token].to(dtype), w_in.to(dtype), offs=ends) + b_in[expert].to(dtype)
        y = torch._grouped_mm(F.gelu(hidden), w_out.to(dtype), offs=ends) + b_out[expert].to(dtype)
    else:
        counts = torch.bincount(flat, minlength=w_in.shape[0]).tolist()
        blocks = x[token].split(counts)  # E blocks of (count_e, D)
        y = torch.cat([F.gelu(block @ w_in[e] + b_in[e]) @ w_out[e] + b_out[e] for e, block in enumerate(blocks)])
    y = y * gates.reshape(-1)[order].unsqueeze(1)  # (N*k, D)
    return torch.zeros(N, D, dtype=y.dtype, device=y.device).index_add_(0, token, y)


@torch.fx.wrap
def global_routing_sums(local: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``local`` over the data-parallel ranks (a detached copy; one process: itself).

    A collective, so every rank must call it with the same shape; the MoE layer calls it in training mode only,
    where every rank runs the same forward passes.

    Example:
        >>> global_routing_sums(torch.tensor([1.0, 2.0])).tolist()
        [1.0, 2.0]
    """
    total = local.detach().clone()
    if _data_parallel_world() > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def _data_parallel_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class MoEFeedForward(nn.Module):
    """Top-k routed Mixture of E GELU-MLP experts with a Switch/GShard balance loss.

    Args:
        config (MoEConfig): D, E, top_k, expert width, dropout.
        device (torch.device | None): where to build the parameters ("meta" for DMP).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> moe = MoEFeedForward(MoEConfig(d_model=4, num_experts=3, top_k=2, expert_hidden=8))
        >>> out = moe(torch.randn(2, 5, 4))
        >>> tuple(out.out.shape), tuple(out.expert_load.shape), round(out.expert_load.sum().item(), 6)
        ((2, 5, 4), (3,), 1.0)
    """

    def __init__(self, config: MoEConfig, *, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.config = config
        E, D, H = config.num_experts, config.d_model, config.expert_hidden
        self.router = nn.Linear(D, E, bias=False, device=device)
        self.w_in = nn.Parameter(torch.empty(E, D, H, device=device))
        self.b_in = nn.Parameter(torch.empty(E, H, device=device))
        self.w_out = nn.Parameter(torch.empty(E, H, D, device=device))
        self.b_out = nn.Parameter(torch.empty(E, D, device=device))
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise each expert like a pair of ``nn.Linear`` layers (uniform in +-1/sqrt(fan_in))."""
        for weight, fan_in in (
            (self.w_in, self.config.d_model),
            (self.b_in, self.config.d_model),
            (self.w_out, self.config.expert_hidden),
            (self.b_out, self.config.expert_hidden),
        ):
            nn.init.uniform_(weight, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))

    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities and the top-k choice of every token.

        Args:
            x (torch.Tensor): [N, D] tokens.

        Returns:
            (probs [N, E] float32, expert_index [N, k] int64, gates [N, k] float32).
        """
        probs = self.router(x).float().softmax(dim=-1)
        top_probs, expert_index = probs.topk(self.config.top_k, dim=-1)
        gates = top_probs / top_probs.sum(dim=-1, keepdim=True) if self.config.top_k > 1 else top_probs
        return probs, expert_index, gates

    def balance(
        self, probs: torch.Tensor, expert_index: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Switch/GShard balance loss and expert load over the real tokens.

        Args:
            probs (torch.Tensor): [N, E] router probabilities.
            expert_index (torch.Tensor): [N, k] chosen experts.
            mask (torch.Tensor | None): [N] bool real tokens (None: all).

        Returns:
            (aux_loss [], expert_load [E]): E * sum_e f_e P_e, and f (sums to 1; detached).
        """
        E, k = self.config.num_experts, self.config.top_k
        weight = probs.new_ones(probs.shape[0]) if mask is None else mask.to(probs.dtype)  # (N,)
        assigned = F.one_hot(expert_index, E).sum(dim=1).to(probs.dtype)  # (N, E) choices per token
        counts = (assigned * weight.unsqueeze(1)).sum(dim=0)  # (E,)
        probability_sums = (probs * weight.unsqueeze(1)).sum(dim=0)  # (E,) S_e, carries the gradient
        world = _data_parallel_world() if self.training else 1
        if world > 1:  # the global batch's f and N (module docstring)
            totals = global_routing_sums(torch.cat([counts, weight.sum().view(1)]))
            counts, real = totals[:E], totals[E].clamp(min=1.0)
        else:
            real = weight.sum().clamp(min=1.0)
        load = counts / (real * k)  # f_e (no gradient: it counts choices)
        importance = probability_sums / real  # P_e on one rank; this rank's share S_re / N of it on W
        return world * E * (load * importance).sum(), load.detach()

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> FeedForwardOutput:
        """Route, dispatch and combine.

        Args:
            x (torch.Tensor): [B, T, D].
            mask (torch.Tensor | None): [B, T] bool, False at padding tokens (left out of the balance loss
                and the load; their outputs are computed but meaningless).

        Returns:
            FeedForwardOutput: out [B, T, D], aux_loss [], expert_load [E].
        """
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)  # (N, D)
        probs, expert_index, gates = self.route(tokens)
        aux_loss, load = self.balance(probs, expert_index, None if mask is None else mask.reshape(B * T))
        out = grouped_expert_forward(tokens, expert_index, gates, [self.w_in, self.b_in, self.w_out, self.b_out])
        return FeedForwardOutput(self.dropout(out.view(B, T, D).to(x.dtype)), aux_loss, load)
