"""Tests of the OneRec model: shapes, NTP loss by hand, log_prob vs forward, configs and parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError
from torchrec.fx import Tracer

from torchrec_onerec.models.config import MODEL_SIZES, OneRecModelConfig, model_size
from torchrec_onerec.models.onerec import OneRecModel, OneRecTrainModule, count_parameters
from torchrec_onerec.models.testing import random_batch, random_codes

CODES, SIZES = random_codes(40, [4, 4], seed=0)


def _model(**overrides: object) -> OneRecModel:
    torch.manual_seed(0)
    return OneRecModel(model_size("tiny", **overrides), SIZES)


def _batch(config: OneRecModelConfig, seed: int = 0):
    return random_batch(CODES, 4, max_history=config.max_history, session_items=config.session_items, seed=seed)


def test_forward_shapes_and_gradients() -> None:
    model = _model(num_users=1000)
    batch = _batch(model.config)
    out = model(batch)
    B, M, L = batch.target_codes.shape
    assert out.logits.shape == (B, M, L, max(SIZES)) and torch.equal(out.labels, batch.target_codes)
    assert torch.isinf(out.logits[:, :, 0, SIZES[0] :]).all()  # slots beyond K_0 are -inf
    assert out.expert_load.shape == (1, 4)
    torch.testing.assert_close(out.loss, out.ntp_loss + model.config.moe_aux_weight * out.aux_loss)
    out.loss.backward()
    assert model.embedding.ec.embeddings["code_0"].weight.grad is not None
    assert model.embedding.ec.embeddings["user_id"].weight.grad is not None
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_uniform_logits_give_log_k() -> None:
    model = _model(use_moe=False)
    for head in model.heads:
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    out = model(_batch(model.config))
    # every real item contributes one code per level: the mean CE is the mean of log K_l
    expected = sum(math.log(k) for k in SIZES) / len(SIZES)
    assert out.ntp_loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)  # dense decoder: no balance loss


def test_padding_targets_do_not_count() -> None:
    model = _model().eval()
    batch = _batch(model.config)
    out = model(batch)
    log_probs = out.logits.log_softmax(dim=-1)
    real = batch.target_codes >= 0
    picked = log_probs.gather(-1, batch.target_codes.clamp(min=0).unsqueeze(-1)).squeeze(-1)[real]
    torch.testing.assert_close(out.ntp_loss, -picked.mean())


def test_item_weights_give_the_weighted_mean_of_the_code_cross_entropies() -> None:
    model = _model().eval()
    batch = _batch(model.config)
    plain = model(batch)
    torch.testing.assert_close(model(batch, torch.ones(batch.target.shape)).ntp_loss, plain.ntp_loss)
    per_code = -plain.logits.log_softmax(dim=-1).gather(-1, batch.target_codes.clamp(min=0).unsqueeze(-1))
    per_item = per_code.squeeze(-1).sum(-1)  # (B, M): each item's codes, summed over the levels
    weights = torch.arange(1.0, 1.0 + batch.target.numel()).view(batch.target.shape)  # padding weights must not count
    real = batch.target_mask
    expected = (per_item * weights)[real].sum() / (weights[real].sum() * len(SIZES))
    weighted = model(batch, weights).ntp_loss
    torch.testing.assert_close(weighted, expected)
    assert not torch.isclose(weighted, plain.ntp_loss)


def test_log_prob_matches_forward_cross_entropy() -> None:
    model = _model().eval()
    batch = _batch(model.config)
    out = model(batch)
    per_user = model.log_prob(batch, batch.target_codes.unsqueeze(1))  # (B, 1): the target session
    real = (batch.target_codes >= 0).sum()
    torch.testing.assert_close(-per_user.sum() / real, out.ntp_loss)
    sessions = torch.stack([batch.target_codes, batch.target_codes.flip(1)], dim=1)  # (B, 2, M, L')
    both = model.log_prob(batch, sessions)
    torch.testing.assert_close(both[:, 0], per_user[:, 0])
    # a session's score depends only on its own codes, not on the other sessions of the user
    torch.testing.assert_close(model.log_prob(batch, sessions[:, 1:]), both[:, 1:])


@pytest.mark.parametrize("history_tokens", ["codes", "items"])
def test_train_module_contract_and_fx_trace(history_tokens: str) -> None:
    module = OneRecTrainModule(_model(num_users=1000, history_tokens=history_tokens))
    batch = _batch(module.model.config)
    loss, (detached, logits, labels) = module(batch)
    assert loss.requires_grad and not detached.requires_grad and not logits.requires_grad
    assert torch.equal(labels, batch.target_codes)
    # what TrainPipelineSparseDist does: trace with the EmbeddingCollection as a leaf
    graph = Tracer(leaf_modules=["EmbeddingCollection"]).trace(module)
    traced = torch.fx.GraphModule(module, graph)
    torch.testing.assert_close(traced(batch)[0], loss)
    assert [n.target for n in graph.nodes if n.op == "call_module"].count("model.embedding.ec") == 1


def test_configs_are_structured_and_checked() -> None:
    cfg = OmegaConf.structured(OneRecModelConfig)
    cfg.d_model = 64
    assert OmegaConf.to_object(cfg).d_model == 64
    with pytest.raises(ConfigAttributeError):
        cfg.no_such_key = 1
    with pytest.raises(ValueError, match="divide d_model"):
        OneRecModelConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="top_k"):
        OneRecModelConfig(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="not one of"):
        model_size("huge")
    with pytest.raises(ValueError, match="model.history_tokens='levels'"):
        OneRecModelConfig(history_tokens="levels")


def test_parameter_counts_from_tiny_to_1b_on_meta() -> None:
    tiny = count_parameters(MODEL_SIZES["tiny"], SIZES)
    assert tiny["total"] == sum(p.numel() for p in _model().parameters())
    big = count_parameters(MODEL_SIZES["1b"], [8192, 8192, 8192, 64])
    assert 0.9e9 < big["total"] < 1.3e9
    assert big["tables"] == (3 * 8192 + 64) * 1024 and big["tables"] + big["dense"] == big["total"]
    assert big["active"] < 0.4 * big["total"]  # top-2 of 24 experts
    dense = count_parameters(model_size("tiny", use_moe=False), SIZES)
    assert dense["active"] == dense["total"]
