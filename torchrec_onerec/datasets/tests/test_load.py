"""Tests of ``load_dataset``: each ``data.source`` reaches its loader with the config's options."""

from pathlib import Path

import pytest

from torchrec_onerec.config import ConfigError, DataConfig, load_config
from torchrec_onerec.datasets.interactions import DataError
from torchrec_onerec.datasets.load import load_dataset


def test_table_source_passes_columns_unit_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("u;i;when;clk\na;x;2022-01-01;1\na;x;2022-01-01;1\n")
    config = DataConfig(
        source="table", path=str(path), user_col="u", item_col="i", time_col="when",
        timestamp_unit="datetime", feedback_cols=["clk"], sep=";", drop_duplicates=False,
    )  # fmt: skip
    with pytest.raises(DataError, match="line 3 repeats line 2"):
        load_dataset(config, seed=0)
    config.drop_duplicates = True
    with pytest.warns(UserWarning, match="duplicate"):
        data = load_dataset(config, seed=0)
    assert data.interactions.values.tolist() == [[0, 0, 1640995200000, 1]] and data.dropped == {"duplicate": 1}


def test_sequence_source_from_config_overrides(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("a 1 2\nb 2\n")
    cfg = load_config(None, ["data.source=sequence", f"data.path={path}", "data.sep=whitespace"])
    data = load_dataset(cfg.data, seed=cfg.seed)
    assert (data.num_users, data.num_items, len(data.interactions)) == (2, 2, 3)


def test_movielens_and_kuairand_sources(tmp_path: Path) -> None:
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "u.data").write_text("1\t2\t3\t4\n")
    assert load_dataset(DataConfig(source="movielens", path=str(tmp_path / "ml")), seed=0).name == "ml"
    with pytest.raises(DataError, match="log_standard_4_25_to_5_08_pure.csv does not exist"):
        load_dataset(DataConfig(source="kuairand", path=str(tmp_path / "ml")), seed=0)


@pytest.mark.parametrize("source", ["kuairand", "movielens", "sequence", "table"])
def test_file_source_without_path_names_the_key(source: str) -> None:
    with pytest.raises(ConfigError, match=rf"data.path is required for data.source='{source}'"):
        load_dataset(DataConfig(source=source), seed=0)


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(source="table", path=str(tmp_path / "none.csv")), seed=0)


def test_synthetic_source() -> None:
    pytest.importorskip("torchrec_onerec.datasets.synthetic", reason="the synthetic world module is not importable")
    cfg = load_config(None, ["data.synthetic.num_users=50", "data.synthetic.num_items=40"])
    data = load_dataset(cfg.data, seed=3)
    assert data.num_users <= 50 and data.num_items <= 40 and len(data.interactions) > 0
