"""Sizes derived from the data: the rules' anchors and bounds, the config check, and a run that uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from torchrec_onerec.config import SIZES_FROM_DATA, ConfigError, load_config
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.pipeline import run_pipeline, stage_fingerprint
from torchrec_onerec.run_dir import RunDir
from torchrec_onerec.sizing import (
    MAX_CODEBOOK,
    MIN_CODEBOOK,
    SIZE_RULES,
    DataShape,
    derived_codebook_sizes,
    derived_max_history,
)

BOTH = "sizes_from_data=[tokenizer.codebook_sizes,split.max_history]"


def test_the_rules_give_back_the_sizes_chosen_on_ml100k_and_amazon_instruments() -> None:
    assert derived_codebook_sizes(1682, 1, item_leaf=True) == [32]  # configs/ml-100k.yaml
    assert derived_codebook_sizes(1682, 3, item_leaf=False) == [32, 32, 32]
    assert derived_codebook_sizes(9922, 3, item_leaf=False) == [64, 64, 64]  # every item unique (README)
    assert derived_max_history(18, 50) == 20 and derived_max_history(400, 50) == 50


def test_codebooks_grow_with_the_catalogue_within_their_bounds() -> None:
    for leaf in (True, False):
        for levels in (1, 2, 3):
            sizes = [derived_codebook_sizes(n, levels, leaf)[0] for n in (2, 100, 10_000, 10**6, 10**9)]
            assert sizes == sorted(sizes) and MIN_CODEBOOK <= sizes[0] and sizes[-1] <= MAX_CODEBOOK
            assert all(k & (k - 1) == 0 for k in sizes)  # powers of two
    # codes only: enough tuples for every item, with room to spare, wherever the bound does not cap it
    assert all(derived_codebook_sizes(n, 3, False)[0] ** 3 >= n for n in (100, 9922, 10**6))


def test_every_derivable_key_has_a_rule_and_an_unknown_one_is_refused_by_name() -> None:
    assert set(SIZE_RULES) == set(SIZES_FROM_DATA)
    with pytest.raises(ConfigError, match="model.d_model"):
        load_config("configs/tiny.yaml", ["sizes_from_data=[model.d_model]"])


def test_the_history_statistic_counts_pre_period_histories() -> None:
    cfg = load_config("configs/tiny.yaml")
    data = load_dataset(cfg.data, seed=0)
    plain = DataShape.of(data)
    extended = DataShape.of(
        data.__class__(**{**data.__dict__, "histories": data.interactions[["user_id", "item_id", "timestamp"]]})
    )
    assert plain.num_items == data.num_items and extended.history_quantile >= 2 * plain.history_quantile - 1


def test_a_run_uses_the_derived_sizes_everywhere_and_reuses_its_stages(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = load_config("configs/tiny.yaml", [BOTH, f"run_dir={run_dir}", "split.max_history=10"])
    first = run_pipeline(cfg, stages=["data", "tokenize"])
    derived = json.loads((run_dir / "sizes_from_data.json").read_text())
    sizes = derived["tokenizer.codebook_sizes"]["value"]
    assert sizes == derived_codebook_sizes(120, 2, item_leaf=False) != cfg.tokenizer.codebook_sizes
    assert derived["split.max_history"]["value"] == 10  # never above the configured n
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["tokenizer"]["codebook_sizes"] == sizes and written["model"]["max_history"] == 10
    report = json.loads((run_dir / "tokenize" / "report.json").read_text())
    assert report["vocab_sizes"][:2] == sizes
    assert first["seconds"].keys() == {"data", "tokenize"}
    # the run's own config.yaml, derived values and all, derives the same values: nothing is redone
    again = run_pipeline(load_config(str(run_dir / "config.yaml")), stages=["data", "tokenize"])
    assert again["skipped"] == ["data", "tokenize"]
    resolved = load_config(str(run_dir / "config.yaml"))
    assert RunDir(run_dir).is_done("tokenize", stage_fingerprint(resolved, "tokenize"))
