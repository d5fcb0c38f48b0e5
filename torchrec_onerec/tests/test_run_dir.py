import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torchrec_onerec.errors import ConfigError
from torchrec_onerec.run_dir import RunDir, fingerprint, load_tagged, save_tagged


def test_fingerprint_is_stable_and_sensitive() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_done_marker_tracks_fingerprint(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert not run.is_done("tokenize", "f1")
    run.mark_done("tokenize", "f1")
    assert run.is_done("tokenize", "f1")
    assert not run.is_done("tokenize", "f2")
    run.clear_done("tokenize")
    assert not run.is_done("tokenize", "f1")


def test_corrupt_done_marker_counts_as_not_done(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.stage_dir("data")
    (tmp_path / "data" / "done.json").write_text("{half")
    assert not run.is_done("data", "x")


def test_metrics_append_and_numpy_values(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.log_metrics("train", {"loss": np.float32(0.5), "hist": np.arange(3)}, step=1)
    run.log_metrics("train", {"loss": 0.25}, step=2)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == 0.5 and rows[0]["hist"] == [0, 1, 2]


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_json("a/b.json", {"x": 1})
    run.write_text("a/c.md", "hello")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.json", "c.md"]


def test_started_marker_tracks_fingerprint(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert not run.was_started("train", "f1")
    run.mark_started("train", "f1")
    assert run.was_started("train", "f1") and not run.was_started("train", "f2")
    assert not run.is_done("train", "f1")


def test_cut_short_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_text("train/summary.json", '{"steps": 3')
    with pytest.raises(ValueError, match=r"train/summary.json is not valid JSON"):
        run.read_json("train/summary.json")
    save_tagged(tmp_path / "m.pt", "demo/1", {"rows": torch.zeros(1000)})
    with open(tmp_path / "m.pt", "r+b") as f:
        f.truncate(200)
    with pytest.raises(ValueError, match=r"m.pt cannot be read .*truncated or corrupt; redo .* \(save_demo\)"):
        load_tagged(tmp_path / "m.pt", "demo/1", "save_demo")


def test_run_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match="run_dir=.*taken' is a file"):
        RunDir(tmp_path / "taken")
    with pytest.raises(ConfigError, match="run_dir=.*taken/sub' cannot be created"):
        RunDir(tmp_path / "taken" / "sub")
