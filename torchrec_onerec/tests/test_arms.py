"""The arm registry: one entry per arm name the config accepts, the stages each reads, what recommend serves, and
arms left out (with the reason) when a stage they need did not apply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

from torchrec_onerec.arms import ARMS, SERVABLE_ARMS, Arm, arm_for, evaluate_arm
from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.context import PipelineContext
from torchrec_onerec.eval.config import ARM_KINDS
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.pipeline import STAGES
from torchrec_onerec.run_dir import RunDir


def test_the_registry_holds_exactly_the_arms_the_config_accepts() -> None:
    assert set(ARMS) == set(ARM_KINDS)
    for name, arm in ARMS.items():
        assert arm.name == name
        assert set(arm.needs) <= set(STAGES), (name, arm.needs)


def test_servable_arms_are_the_generative_ones_with_a_model_file() -> None:
    assert SERVABLE_ARMS == (
        "onerec",
        "onerec_ipa",
        "onerec_diverse",
        "onerec_ipa_diverse",
        "onerec_slate",
        "onerec_ipa_slate",
        "onerec_interp_slate",
        "onerec_mix_slate",
    )
    assert ARMS["onerec"].serves_from == "train" and ARMS["onerec_ipa"].serves_from == "align"
    assert ARMS["onerec_diverse"].serves_from == "train" and ARMS["onerec_ipa_diverse"].serves_from == "align"
    assert ARMS["onerec_diverse"].serving_penalty is not None and ARMS["onerec"].serving_penalty is None
    assert ARMS["onerec_slate"].serves_from == "train" and ARMS["onerec_ipa_slate"].serves_from == "align"
    slates = ["onerec_slate", "onerec_ipa_slate", "onerec_interp_slate", "onerec_mix_slate"]
    assert [a for a in ARMS if ARMS[a].slate] == slates
    assert ARMS["onerec_mix_slate"].needs == ("tokenize", "train", "align")
    assert ARMS["onerec_mix_slate"].serving_mixture is not None and ARMS["onerec_mix_slate"].serves_from == "align"
    assert ARMS["onerec_interp_slate"].serves_from == "evaluate"
    assert ARMS["onerec_interp_slate"].needs == ("tokenize", "train", "align")
    assert all(ARMS[a].model_path is None for a in ARMS if a not in SERVABLE_ARMS)


def test_an_arm_that_serves_must_say_from_which_file() -> None:
    with pytest.raises(ValueError, match="serves_from='train' and model_path go together"):
        Arm("x", ("train",), lambda ctx, rm: None, lambda config, info: "", serves_from="train")  # type: ignore
    with pytest.raises(ValueError, match="a level mixture is served as a slate, from a model file"):
        Arm("x", ("train",), lambda ctx, rm: None, lambda config, info: "", serving_mixture=lambda run: ("", []))  # type: ignore


def test_model_arms_and_unknown_names() -> None:
    arm = arm_for("model:somewhere/best_model.pt")
    assert arm.name == "model:somewhere/best_model.pt" and arm.needs == ("tokenize",)
    assert arm.chosen(OneRecConfig(), {}) == "an exported model named on the command line"
    with pytest.raises(ValueError, match="'ranker' is not one of"):
        arm_for("ranker")


def test_how_each_arm_was_chosen_reads_the_config() -> None:
    config = OneRecConfig()
    config.align.iterations, config.align.reward_source = 6, "ranker"
    assert "after 6 alignment iterations to `align.reward_source=ranker`" in ARMS["onerec_ipa"].chosen(config, {})
    info = {"diversity_weight": 0.2, "selected_on": "validation NDCG@10", "selection": {"0.0": 0.1, "0.2": 0.2}}
    assert ARMS["cascade_rerank"].chosen(config, info) == (
        "the cascade, then an MMR re-rank with diversity weight "
        "0.2, chosen on validation NDCG@10 (0.0: 0.1000, 0.2: "
        "0.2000)"
    )


def test_a_diverse_arm_reads_its_base_arm_and_says_how_its_penalty_was_chosen() -> None:
    config = OneRecConfig()
    assert ARMS["onerec_ipa_diverse"].needs == ARMS["onerec_ipa"].needs
    assert ARMS["onerec_diverse"].needs == ARMS["onerec"].needs
    info = {"diversity_penalty": 1.0, "selected_on": "validation NDCG@10", "selection": {"0.0": 0.1, "1.0": 0.3}}
    assert ARMS["onerec_diverse"].chosen(config, info) == (
        f"{ARMS['onerec'].chosen(config, info)}; served by beam search with a diversity penalty of 1.0 per earlier "
        "session item under the same first code, chosen on validation NDCG@10 (0.0: 0.1000, 1.0: 0.3000)"
    )
    assert ARMS["onerec_ipa_slate"].needs == ARMS["onerec_ipa"].needs
    assert "; served as a slate from its next-item distribution with a diversity penalty of 1.0" in (
        ARMS["onerec_ipa_slate"].chosen(config, info)
    )


def test_a_select_arm_needs_the_alignment_reward_and_says_how_many_sessions_competed() -> None:
    config = OneRecConfig()
    config.align.reward_source = "ranker"
    assert ARMS["onerec_select"].needs == ("tokenize", "train", "align")
    assert ARMS["onerec_ipa_select"].needs == ARMS["onerec_ipa"].needs
    assert "onerec_select" not in SERVABLE_ARMS
    info = {"select_top_n": 5, "selected_on": "validation NDCG@10", "selection": {"0.0": 0.1, "5.0": 0.3}}
    assert ARMS["onerec_select"].chosen(config, info) == (
        f"{ARMS['onerec'].chosen(config, info)}; served the best of its 5 most probable sessions by "
        "`align.reward_source=ranker`, chosen on validation NDCG@10 (0.0: 0.1000, 5.0: 0.3000)"
    )
    info = {**info, "select_top_n": 0, "selection": {"0.0": 0.1, "10.0": 0.2, "2.0": 0.3}}
    assert (
        ARMS["onerec_select"]
        .chosen(config, info)
        .endswith(
            "; served as searched (no re-selection), chosen on validation NDCG@10 "
            "(0.0: 0.1000, 2.0: 0.3000, 10.0: 0.2000)"
        )
    )  # the values tried, in numeric order


@pytest.mark.parametrize(
    "override, message",
    [
        ({"reward_source": "world"}, "the synthetic world's truth, which never serves"),
        ({}, r"eval.select_candidates=\[2, 30\] has \[30\], above eval.num_return=20"),
    ],
)
def test_a_select_arm_refuses_the_worlds_truth_and_more_candidates_than_returned(
    tmp_path: Path, override: dict, message: str
) -> None:
    config = OneRecConfig()
    config.eval.select_candidates = [2, 30]
    for key, value in override.items():
        setattr(config.align, key, value)
    with pytest.raises(ValueError, match=message):
        ARMS["onerec_select"].score(PipelineContext(config, RunDir(tmp_path)), None)


def test_an_arm_whose_stage_did_not_apply_is_left_out_with_the_reason(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    (tmp_path / "align").mkdir()
    (tmp_path / "align" / "summary.json").write_text(json.dumps({"not_applicable": "protocol A data has no labels"}))
    ctx = PipelineContext(OneRecConfig(), run)
    reward_model: Optional[SessionRewardModel] = None
    for name in ("onerec_dpo", "onerec_ipa", "onerec_ipa_diverse"):
        result, why = evaluate_arm(ctx, name, reward_model)
        assert result is None and why == "the align stage did not apply: protocol A data has no labels"


def test_evaluate_arm_scores_an_arm_whose_stages_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scored = EvalResult.__new__(EvalResult)
    monkeypatch.setitem(ARMS, "popularity", Arm("popularity", (), lambda ctx, rm: scored, lambda c, i: ""))
    result, why = evaluate_arm(PipelineContext(OneRecConfig(), RunDir(tmp_path)), "popularity", None)
    assert result is scored and why == ""
