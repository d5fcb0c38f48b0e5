"""The scripts of ``examples/`` run as a user runs them (a subprocess each; torchrun with two processes for the
sharded one) and do what their docstrings say."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(command: List[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("sharding", [[], ["--package-sharding"]], ids=["torchrec_recipe", "shard_for_training"])
def test_own_training_loop_learns_and_generates_real_unseen_items(tmp_path: Path, sharding: List[str]) -> None:
    proc = _run([sys.executable, str(EXAMPLES / "own_training_loop.py"), "--run-dir", str(tmp_path), *sharding])
    summary = json.loads((tmp_path / "summary.json").read_text())
    losses = summary["losses"]
    assert len(losses) == 80 and np.mean(losses[-10:]) < 0.6 * losses[0]
    sessions, history = np.array(summary["sessions"]), np.array(summary["history"])
    assert sessions.shape == (64, 2)
    assert ((sessions >= 0) & (sessions < summary["num_items"])).all()  # only catalogue items
    assert (sessions[:, 0] != sessions[:, 1]).all()  # no repeat within a session
    assert not any(set(s) & set(h[h >= 0]) for s, h in zip(sessions.tolist(), history))  # history excluded
    assert summary["on_topic"] > 0.5  # chance is 1 / 8 topics; an untrained model gets about 0.2
    assert "generated items in the user's topic" in proc.stdout


def test_torchrun_training_shards_tables_over_two_ranks(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    proc = _run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            str(EXAMPLES / "torchrun_training.py"),
            "--run-dir",
            str(tmp_path),
            "train.sharding_type=table_wise",
        ]
    )
    result = json.loads((tmp_path / "train" / "result.json").read_text())
    assert result["world_size"] == 2 and result["stop_reason"] == "epochs"
    assert {p["sharding_type"] for p in result["plan"].values()} == {"table_wise"}
    assert {rank for p in result["plan"].values() for rank in p["ranks"]} == {0, 1}  # both ranks hold tables
    with open(tmp_path / "train" / "metrics.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert (tmp_path / "train" / "best_model.pt").is_file()
    assert "sharding plan" in proc.stdout and "code_0: table_wise" in proc.stdout
    assert proc.stdout.count("world size 2") == 1  # rank 0 prints, rank 1 does not


def test_ab_own_table_compares_your_cascade_with_onerec(tmp_path: Path) -> None:
    proc = _run([sys.executable, str(EXAMPLES / "ab_own_table.py"), "--run-dir", str(tmp_path)])
    with open(tmp_path / "your_log.csv") as f:
        header = next(csv.reader(f))
    assert header == ["user_id", "item_id", "timestamp", "click", "long_view", "like"]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "source: table" in config and "embedding_source: collaborative" in config
    report = (tmp_path / "run" / "compare" / "report.md").read_text()
    for row in ("| cascade |", "| onerec |", "| popularity |", "| lift of onerec |"):
        assert row in report, row
    yours = (tmp_path / "your_ab" / "report.md").read_text()
    for row in ("| your_cascade |", "| cascade |", "| onerec |", "| lift of onerec |"):
        assert row in yours, row
    assert "relative to **your_cascade**" in yours
    assert f"A/B report: {tmp_path / 'run' / 'compare' / 'report.md'}" in proc.stdout
