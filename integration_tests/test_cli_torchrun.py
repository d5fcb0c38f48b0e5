"""The `onerec` pipeline end to end on the tiny synthetic world: one process, then training under torchrun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def _onerec(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torchrec_onerec", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_run_then_torchrun_training_gives_the_same_kind_of_result(tmp_path: Path) -> None:
    one = tmp_path / "one"
    proc = _onerec("run", TINY, f"run_dir={one}", cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in ("data", "tokenize", "train", "evaluate"):
        assert (one / stage / "done.json").is_file()
    metrics = json.loads((one / "evaluate" / "metrics.json").read_text())
    assert set(metrics) == {"onerec", "popularity"}
    assert metrics["onerec"]["metrics"]["legality"] == 1.0
    assert metrics["onerec"]["metrics"]["repeat_rate"] == 0.0

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    two = tmp_path / "two"
    shutil.copytree(one, two, ignore=shutil.ignore_patterns("train", "evaluate"))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "torchrec_onerec", "train", TINY,
                           f"run_dir={two}"], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((two / "train" / "summary.json").read_text())
    assert result["world_size"] == 2 and result["steps"] > 0
    assert (two / "train" / "done.json").is_file()


def test_torchrun_refuses_to_tokenize_in_every_rank(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "torchrec_onerec", "train", TINY,
                           f"run_dir={tmp_path}"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode != 0
    assert "onerec tokenize CONFIG" in proc.stderr
