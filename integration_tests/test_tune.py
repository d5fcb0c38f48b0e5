"""``onerec tune`` on ``configs/tiny.yaml``: trials scored on validation at two seeds, the best config written with
how it was chosen, then one run of it on the test split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from torchrec_onerec.cli import main
from torchrec_onerec.config import load_config

TINY = "configs/tiny.yaml"
SEARCH = [
    "tune.space={cascade.retrieval.embedding_dim: [8, 16], cascade.retrieval.temperature: {low: 0.05, high: 0.2}}",
    "tune.trials=3",
    "tune.seeds=[0, 1]",
    "tune.arm=cascade",
    "compare.arms=[cascade, popularity]",
    "cascade.retrieval.optim.epochs=1",
    "cascade.ranker.optim.epochs=1",
]


def test_tune_chooses_on_validation_and_scores_the_choice_on_test_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tune", TINY, f"run_dir={tmp_path}", *SEARCH]) == 0
    rows = list(csv.DictReader(open(tmp_path / "tune" / "trials.csv")))
    assert len(rows) == 3 and {"seed 0", "seed 1", "mean"} <= set(rows[0])
    for row in rows:
        assert float(row["mean"]) == pytest.approx((float(row["seed 0"]) + float(row["seed 1"])) / 2, abs=1e-4)
        trial = tmp_path / "tune" / f"trial-{int(row['trial']):03d}"
        for seed in (0, 1):  # only the stages the cascade arm reads ran, on the validation split
            assert (trial / f"seed-{seed}" / "cascade" / "done.json").is_file()
            assert not (trial / f"seed-{seed}" / "train").exists()
            assert load_config(str(trial / f"seed-{seed}" / "config.yaml")).eval.split == "valid"
    best = max(rows, key=lambda r: float(r["mean"]))
    text = (tmp_path / "tune" / "best.yaml").read_text()
    assert text.startswith("# Chosen by `onerec tune` on validation ndcg@10 of arm cascade")
    chosen = load_config(str(tmp_path / "tune" / "best.yaml"))
    assert chosen.cascade.retrieval.embedding_dim == json.loads(best["cascade.retrieval.embedding_dim"])
    assert chosen.eval.split == "test" and chosen.run_dir == str(tmp_path)
    evaluated = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert set(evaluated["arms"]) == {"cascade", "popularity"}
    assert "best config:" in capsys.readouterr().out


def test_an_empty_space_an_unknown_key_or_an_unlisted_arm_is_an_error_that_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tune", TINY, f"run_dir={tmp_path}"]) == 2
    assert "tune.space is empty" in capsys.readouterr().err
    assert main(["tune", TINY, f"run_dir={tmp_path}", "tune.space={cascade.no_such_key: [1, 2]}"]) == 2
    assert "cascade.no_such_key" in capsys.readouterr().err
    assert main(["tune", TINY, f"run_dir={tmp_path}", *SEARCH, "tune.arm=sasrec"]) == 2
    assert "tune.arm='sasrec' is not in compare.arms" in capsys.readouterr().err


def test_tune_scores_trials_with_the_sizes_their_stages_were_run_with(tmp_path: Path) -> None:
    # tiny's [8, 8] codebooks become [32, 32] from its 120 items: a trial scored with the sizes as written would
    # refuse the codebook its own tokenize stage wrote
    search = [
        "sizes_from_data=[tokenizer.codebook_sizes]",
        "tune.space={model.dropout: [0.1]}",
        "tune.trials=1",
        "tune.seeds=[0]",
        "tune.arm=onerec",
        "tune.score_test=false",
        "train.optim.epochs=1",
        "compare.arms=[onerec, popularity]",
        "compare.baseline=popularity",
    ]
    assert main(["tune", TINY, f"run_dir={tmp_path}", *search]) == 0
    rows = list(csv.DictReader(open(tmp_path / "tune" / "trials.csv")))
    assert len(rows) == 1 and float(rows[0]["mean"]) >= 0
    trial = load_config(str(tmp_path / "tune" / "trial-000" / "seed-0" / "config.yaml"))
    assert trial.tokenizer.codebook_sizes == [32, 32]
