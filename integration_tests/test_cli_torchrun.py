"""The `onerec` pipeline end to end on the tiny synthetic world: one process, then every training stage (generative
model, reward model, alignment, cascade, SASRec) and the comparison under torchrun with two processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from torchrec_onerec.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
WITH_SASREC = [
    "compare.arms=[cascade,cascade_rerank,onerec,onerec_dpo,onerec_ipa,onerec_interp_slate,popularity,sasrec]",
    "sasrec.optim.epochs=2",
    "sasrec.embedding_dim=16",
]


def _onerec(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torchrec_onerec", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_run_then_torchrun_run_gives_the_same_kind_of_result(tmp_path: Path) -> None:
    one = tmp_path / "one"
    proc = _onerec("run", TINY, f"run_dir={one}", *WITH_SASREC, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in STAGES:
        assert (one / stage / "done.json").is_file(), stage
    metrics = json.loads((one / "evaluate" / "metrics.json").read_text())["arms"]
    generative = ("onerec", "onerec_dpo", "onerec_ipa", "onerec_interp_slate")
    assert set(metrics) == {"cascade", "cascade_rerank", *generative, "popularity", "sasrec"}
    for arm in generative:
        assert metrics[arm]["metrics"]["legality"] == 1.0 and metrics[arm]["metrics"]["repeat_rate"] == 0.0
    for arm in metrics.values():  # protocol C and the reward model's estimates on every arm
        assert {"true_reward", "reward_swt_max", "reward_ltr_mean"} <= set(arm["metrics"])
    report = (one / "compare" / "report.md").read_text()
    for needed in (
        "lift of onerec_ipa",
        "protocol C",
        "## Session reward model",
        "| mean / all |",
        "## Cascade ranker",
        "## Alignment iterations",
        "training_curves.png",
    ):
        assert needed in report, needed
    assert f"report: {one / 'compare' / 'report.md'}" in proc.stdout

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    two = tmp_path / "two"
    shutil.copytree(one, two, ignore=shutil.ignore_patterns(*STAGES[2:]))
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "torchrec_onerec",
            "run",
            TINY,
            f"run_dir={two}",
            *WITH_SASREC,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("train", "train-reward", "cascade", "sasrec"):
        assert json.loads((two / stage / "summary.json").read_text())["world_size"] == 2, stage
    assert json.loads((two / "align" / "summary.json").read_text())["iterations"] == 2
    assert (two / "compare" / "done.json").is_file()
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    peaks = {r["stage"]: r["peak_memory"] for r in records if "peak_memory" in r}
    assert len(peaks["train"]) == 2 and len(peaks["evaluate"]) == 2 and len(peaks["compare"]) == 1  # per rank
    evaluated = json.loads((two / "evaluate" / "metrics.json").read_text())["arms"]
    for arm in generative:  # each rank searched a share of the users, on its shards (the slate too)
        assert evaluated[arm]["info"]["ranks"] == 2 and evaluated[arm]["info"]["sharded_tables"], arm


def test_torchrun_refuses_to_tokenize_in_every_rank(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "torchrec_onerec", "train", TINY, f"run_dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "onerec tokenize CONFIG" in proc.stderr
