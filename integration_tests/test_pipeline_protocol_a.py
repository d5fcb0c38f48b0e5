"""The whole pipeline on next-item (protocol A) data: the stages that need feedback labels say why they do not
apply, the aligned arms are left out with that reason, and the report still compares the other arms."""

import json
from pathlib import Path

import numpy as np
import pytest

from torchrec_onerec.cli import main

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
SEQUENCE = str(Path(__file__).resolve().parents[1] / "configs" / "sequence.yaml")


def test_protocol_a_run_skips_reward_and_alignment_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arms = "[cascade,cascade_rerank,onerec,onerec_dpo,onerec_ipa,popularity,sasrec]"
    assert (
        main(
            [
                "run",
                TINY,
                f"run_dir={tmp_path}",
                "split.protocol=A",
                "split.session_items=1",
                f"compare.arms={arms}",
                "sasrec.optim.epochs=2",
                "sasrec.embedding_dim=16",
            ]
        )
        == 0
    )
    for stage in ("train-reward", "align"):
        assert "protocol A" in json.loads((tmp_path / stage / "summary.json").read_text())["not_applicable"]
    evaluated = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert set(evaluated["arms"]) == {"cascade", "cascade_rerank", "onerec", "popularity", "sasrec"}
    assert json.loads((tmp_path / "sasrec" / "summary.json").read_text())["epochs"] == 2
    # no reward model under protocol A: the re-rank's weight is chosen on validation NDCG@10
    assert evaluated["arms"]["cascade_rerank"]["info"]["selected_on"] == "validation NDCG@10"
    assert set(evaluated["unavailable"]) == {"onerec_dpo", "onerec_ipa"}
    assert "reward_vtr_max" not in evaluated["arms"]["onerec"]["metrics"]
    report = (tmp_path / "compare" / "report.md").read_text()
    assert "## Arms left out" in report and "protocol A" in report and "lift of onerec" in report
    assert "- sasrec: SASRec trained for at most 2 epochs" in report
    assert "report:" in capsys.readouterr().out


def test_the_sequence_recipe_runs_on_a_new_users_file_with_sizes_from_its_data(tmp_path: Path) -> None:
    # a `user item item ...` file as a new user brings it: 150 users, 400 items, 6-30 items each
    rng = np.random.default_rng(0)
    lines = [
        " ".join([f"u{u}", *(f"i{i}" for i in rng.choice(400, size=rng.integers(6, 31), replace=False))])
        for u in range(150)
    ]
    path = tmp_path / "user_sequence.txt"
    path.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "run",
                SEQUENCE,
                f"data.path={path}",
                f"run_dir={run_dir}",
                "compare.arms=[onerec,popularity]",
                "compare.baseline=popularity",
                "model.d_model=16",
                "model.ffn_hidden=32",
                "model.expert_hidden=16",
                "train.optim.epochs=1",
                "eval.beam_size=10",
                "eval.num_return=10",
            ]
        )
        == 0
    )
    derived = json.loads((run_dir / "sizes_from_data.json").read_text())
    # sqrt(400) = 20 items per prefix -> 16 clusters (the floor of 8 does not bind); 95% of users have <= 30 items
    assert derived["tokenizer.codebook_sizes"]["value"] == [16] and derived["split.max_history"]["value"] == 30
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["arms"]["onerec"]["metrics"]
    assert metrics["legality"] == 1.0 and metrics["ndcg@10"] > 0
