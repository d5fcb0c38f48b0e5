"""Protocol C end to end on ``configs/tiny.yaml``: the report's diagnostics, the cascade_rerank arm chosen on
validation, alignment to the ranker and the reward model mixed, and scoring on the validation split without
the world's truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torchrec_onerec.cli import main
from torchrec_onerec.alignment.ipa import model_file
from torchrec_onerec.interpolation import interpolate_states
from torchrec_onerec.recommend import Recommender
from torchrec_onerec.run_dir import load_tagged
from torchrec_onerec.train.export import EXPORT_FORMAT, load_exported
from torchrec_onerec.eval.world_diagnostics import REFERENCES

TINY = "configs/tiny.yaml"
MIX = [
    "align.reward_source=mix",
    "align.iterations=1",
    "compare.arms=[cascade,cascade_rerank,onerec,onerec_dpo,onerec_ipa,onerec_ipa_diverse,onerec_ipa_select,"
    "onerec_ipa_slate,onerec_interp_slate,popularity]",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("protocol_c")
    assert main(["run", TINY, f"run_dir={path}", *MIX]) == 0
    return path


def test_report_places_every_arm_between_the_world_references(run_dir: Path) -> None:
    listed = json.loads((run_dir / "compare" / "world_diagnostics.json").read_text())["rows"]
    rows = {row.pop("sessions"): row for row in listed}
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["arms"]
    assert list(rows)[: len(REFERENCES)] == list(REFERENCES)
    assert set(metrics) <= set(rows)
    for arm, row in rows.items():
        assert 0.0 < row["share_of_ceiling"] <= 1.0 + 1e-9, arm
        if arm in metrics:
            assert row["true_reward"] == pytest.approx(metrics[arm]["metrics"]["true_reward"])
    report = (run_dir / "compare" / "report.md").read_text()
    assert "## Protocol C: where the sessions stand" in report and "| *ceiling* |" in report
    assert "## How each arm was chosen" in report and "align.reward_source=mix" in report
    # compare.arms does not list sasrec: its stage records why it did not train
    assert "sasrec" in json.loads((run_dir / "sasrec" / "summary.json").read_text())["not_applicable"]


def test_every_stage_records_its_wall_time_and_peak_memory(run_dir: Path) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_stage = {r["stage"]: r for r in records if "peak_memory" in r}
    assert set(by_stage) == {
        "data",
        "tokenize",
        "train",
        "train-reward",
        "cascade",
        "align",
        "sasrec",
        "evaluate",
        "compare",
    }
    for stage, record in by_stage.items():
        assert record["seconds"] >= 0 and len(record["peak_memory"]) == 1, stage  # one process: one rank
        assert record["peak_memory"][0]["host_peak_mib"] > 0, stage


def test_rerank_weight_is_chosen_on_validation(run_dir: Path) -> None:
    info = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["arms"]["cascade_rerank"]["info"]
    table = info["selection"]
    assert set(table) == {"0.0", "0.1", "0.2", "0.3", "0.5", "0.7"}
    assert info["diversity_weight"] == float(max(table, key=lambda w: (table[w], -float(w))))
    assert info["selected_on"].startswith("validation")


@pytest.mark.parametrize("arm", ["onerec_ipa_diverse", "onerec_ipa_slate"])
def test_the_diverse_and_slate_arms_penalty_is_chosen_on_validation(run_dir: Path, arm: str) -> None:
    arms = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["arms"]
    info = arms[arm]["info"]
    table = info["selection"]
    assert set(table) == {"0.0", "0.5", "1.0", "2.0"}
    assert info["diversity_penalty"] == float(max(table, key=lambda p: (table[p], -float(p))))
    assert info["selected_on"].startswith("validation")
    assert info["serving"] == ("slate" if arm.endswith("slate") else "beam")
    report = (run_dir / "compare" / "report.md").read_text()
    assert f"| {arm} |" in report and "with a diversity penalty of" in report


def test_the_interpolated_arm_chooses_weight_and_penalty_on_validation_and_serves_that_model(run_dir: Path) -> None:
    arms = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["arms"]
    info = arms["onerec_interp_slate"]["info"]
    table = info["selection"]
    assert set(table) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert info["interpolation_weight"] == float(max(table, key=lambda w: (table[w], -float(w))))
    assert info["selected_on"].startswith("validation") and info["serving"] == "slate"
    # at w = 1 it is the aligned model's slate: the same best validation score as onerec_ipa_slate's choice
    assert table["1.0"] == max(arms["onerec_ipa_slate"]["info"]["selection"].values())
    served_file = run_dir / "evaluate" / "onerec_interp_slate.pt"
    recommender = Recommender.from_run_dir(run_dir, arm="onerec_interp_slate")
    assert recommender.slate and recommender.diversity_penalty == info["diversity_penalty"]
    model_config, sizes = recommender.config.model, recommender.codebook.vocab_sizes
    ntp = load_exported(run_dir / "train" / "best_model.pt", model_config, sizes).state_dict()
    ipa = load_exported(run_dir / "align" / model_file(1), model_config, sizes).state_dict()
    expected = interpolate_states(ntp, ipa, info["interpolation_weight"])
    served = recommender.model.state_dict()
    assert all(torch.equal(served[key].cpu(), expected[key]) for key in expected)
    tagged = [
        load_tagged(path, EXPORT_FORMAT, "save_exported") for path in (served_file, run_dir / "train" / "best_model.pt")
    ]
    assert tagged[0]["fingerprint"] == tagged[1]["fingerprint"]  # the ends' training fingerprint
    assert "| onerec_interp_slate |" in (run_dir / "compare" / "report.md").read_text()


def test_the_select_arm_picks_its_candidates_on_validation_and_serves_the_best_of_them(run_dir: Path) -> None:
    arms = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["arms"]
    info = arms["onerec_ipa_select"]["info"]
    table = info["selection"]
    assert set(table) == {"0.0", "2.0", "5.0", "10.0"}
    assert info["select_top_n"] == int(float(max(table, key=lambda n: (table[n], -float(n)))))
    assert info["selected_on"].startswith("validation")
    # the same beams as onerec_ipa's, re-ordered: each user's set of returned sessions is unchanged
    plain = np.load(run_dir / "evaluate" / "arms" / "onerec_ipa.npz")["sessions"]
    chosen = np.load(run_dir / "evaluate" / "arms" / "onerec_ipa_select.npz")["sessions"]
    for user in range(len(plain)):
        assert sorted(map(tuple, plain[user])) == sorted(map(tuple, chosen[user]))
    assert "| onerec_ipa_select |" in (run_dir / "compare" / "report.md").read_text()


def test_valid_split_scores_the_validation_users_without_the_truth(run_dir: Path) -> None:
    args = [TINY, f"run_dir={run_dir}", *MIX, "eval.split=valid"]
    assert main(["evaluate", *args]) == 0 and main(["compare", *args]) == 0
    arms = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["arms"]
    assert all("true_reward" not in arm["metrics"] for arm in arms.values())
    assert all("reward_swt_max" in arm["metrics"] for arm in arms.values())
    report = (run_dir / "compare" / "report.md").read_text()
    assert "| split scored | valid |" in report and "Protocol C" not in report
