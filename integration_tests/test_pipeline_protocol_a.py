"""The whole pipeline on next-item (protocol A) data: the stages that need feedback labels say why they do not
apply, the aligned arms are left out with that reason, and the report still compares the other arms."""

import json
from pathlib import Path

import pytest

from torchrec_onerec.cli import main

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def test_protocol_a_run_skips_reward_and_alignment_with_a_reason(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    arms = "[cascade,cascade_rerank,onerec,onerec_dpo,onerec_ipa,popularity,sasrec]"
    assert main(["run", TINY, f"run_dir={tmp_path}", "split.protocol=A", "split.session_items=1",
                 f"compare.arms={arms}", "sasrec.epochs=2", "sasrec.embedding_dim=16"]) == 0
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
