"""Reliability of the `onerec` command as a user runs it (subprocesses on the tiny synthetic world, CPU only).

- Kill -9 during training, then rerun: training resumes from the last complete checkpoint (a partial save is
  ignored) and its validations, best model, final weights and downstream evaluation equal an uninterrupted run's.
- Same seed, same result: two runs give equal evaluation and comparison artefacts (timings aside); another seed
  gives another model.
- A worker killed under torchrun ends the job with an error in bounded time, never a hang.

Every process is started in its own session, so a test that times out kills its whole process group.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import numpy as np
import pytest
import torch

from torchrec_onerec.pipeline import STAGES
from torchrec_onerec.run_dir import load_tagged
from torchrec_onerec.train.checkpoint import META_FILE, TMP_PREFIX
from torchrec_onerec.train.export import EXPORT_FORMAT

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CHECKPOINT_EVERY = "train.checkpoint_every_steps=2"  # tiny trains 2 epochs of 13 steps: several checkpoints
RUN_TIMEOUT_S = 240
DEAD_WORKER_BOUND_S = 60  # torchrun must end the job this soon after a worker dies
# Wall-clock readings and the run directory's own path are the only things two equal runs may differ in.
TIMINGS = {"seconds", "users_per_second", "samples_per_s", "tokens_per_s", "train_seconds", "time"}
TQDM_POSITION = re.compile(r"train:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def _launch(argv: Sequence[str], log: Path) -> subprocess.Popen:
    """Start a command in its own session, its stdout and stderr going to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv), cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s session, including children that outlived it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group has exited
        pass
    proc.wait()


def _wait(proc: subprocess.Popen, log: Path, timeout: float = RUN_TIMEOUT_S) -> int:
    """The exit code of ``proc``; kills its process group and fails the test if it runs past ``timeout``."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        pytest.fail(f"{proc.args} still ran after {timeout} s, killed; log tail:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _onerec(*args: str, log: Path) -> None:
    """Run ``python -m torchrec_onerec ARGS`` to completion; fail on a non-zero exit."""
    proc = _launch([sys.executable, "-m", "torchrec_onerec", *args], log)
    assert _wait(proc, log) == 0, _tail(log)


def _poll(condition: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str, timeout: float = 120) -> None:
    """Wait until ``condition()``; fail (killing ``proc``'s group) if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode} before {what}; log tail:\n{_tail(log)}")
        if time.monotonic() > deadline:
            _kill_group(proc)
            pytest.fail(f"no {what} after {timeout} s; log tail:\n{_tail(log)}")
        time.sleep(0.005)


def _complete_checkpoints(run_dir: Path) -> List[Path]:
    """Checkpoint folders that ``CheckpointStore`` counts as complete (renamed from ``.tmp-``, with meta.json)."""
    root = run_dir / "train" / "checkpoints"
    try:
        names = sorted(p for p in root.iterdir() if not p.name.startswith(TMP_PREFIX))
    except FileNotFoundError:  # not created yet, or removed by a fresh run's clear()
        return []
    return [p for p in names if (p / META_FILE).is_file()]


def _stable(obj: Any) -> Any:
    """``obj`` without its wall-clock readings."""
    if isinstance(obj, dict):
        return {key: _stable(value) for key, value in obj.items() if key not in TIMINGS}
    if isinstance(obj, list):
        return [_stable(value) for value in obj]
    return obj


def _json(run_dir: Path, relpath: str) -> Any:
    """A JSON artefact with timings dropped and the run directory's path replaced by a placeholder."""
    return _stable(json.loads((run_dir / relpath).read_text().replace(str(run_dir), "<run_dir>")))


def _records(run_dir: Path, stage: str) -> List[Dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [_stable(r) for r in map(json.loads, lines) if r["stage"] == stage]


def _exported_state(path: Path) -> Dict[str, torch.Tensor]:
    return load_tagged(path, EXPORT_FORMAT, "save_exported")["state_dict"]


def _assert_same_weights(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [key for key in a if not torch.equal(a[key], b[key])]
    assert not differ, f"weights differ: {differ}"


def _arm_metrics(run_dir: Path) -> Dict[str, Dict[str, float]]:
    return {arm: r["metrics"] for arm, r in json.loads((run_dir / "evaluate/metrics.json").read_text())["arms"].items()}


class BackgroundRuns:
    """``onerec`` commands started at once, each in its own run directory under ``root``, so that they overlap.

    Args:
        root (Path): the folder of the run directories and their logs.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: Dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        """Start ``onerec ARGS run_dir=<root>/<name>``."""
        argv = [sys.executable, "-m", "torchrec_onerec", *args, f"run_dir={self.root / name}"]
        self.procs[name] = _launch(argv, self.root / f"{name}.log")

    def finished(self, name: str) -> Path:
        """The run directory of ``name`` once its command succeeded."""
        log = self.root / f"{name}.log"
        assert _wait(self.procs[name], log) == 0, _tail(log)
        return self.root / name

    def stop(self) -> None:
        for proc in self.procs.values():
            _kill_group(proc)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundRuns]:
    """Two uninterrupted seed-0 runs and a seed-1 evaluation, running while the tests start their own commands."""
    started = BackgroundRuns(tmp_path_factory.mktemp("runs"))
    started.start("uninterrupted", "run", TINY, CHECKPOINT_EVERY)
    started.start("again", "run", TINY, CHECKPOINT_EVERY)
    started.start("seed1", "evaluate", TINY, "seed=1")
    yield started
    started.stop()


def test_kill_9_during_training_then_rerun_resumes_and_equals_an_uninterrupted_run(
    runs: BackgroundRuns, tmp_path: Path
) -> None:
    run_dir, log = tmp_path / "killed", tmp_path / "killed.log"
    command = [sys.executable, "-m", "torchrec_onerec", "run", TINY, f"run_dir={run_dir}", CHECKPOINT_EVERY]
    proc = _launch(command, log)
    try:
        # the CLI trains in its own process, so that process is the one to kill
        _poll(lambda: bool(_complete_checkpoints(run_dir)), proc, log, "complete training checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        _kill_group(proc)
    assert (run_dir / "train" / "started.json").is_file() and not (run_dir / "train" / "done.json").exists()
    uninterrupted = runs.finished("uninterrupted")
    latest = _complete_checkpoints(run_dir)[-1]
    killed_at = json.loads((latest / META_FILE).read_text())["step"]
    total = json.loads((uninterrupted / "train" / "result.json").read_text())["steps"]
    assert 0 < killed_at < total
    # what a kill during a save leaves behind (no meta.json, shards cut short), at a later step: never to be loaded
    partial = latest.parent / f"{TMP_PREFIX}step-{total - 1:09d}-epoch-00001-batch-0000012"
    shutil.copytree(latest, partial)
    (partial / META_FILE).unlink()
    for shard in partial.glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:100])

    # `onerec train` on the interrupted stage resumes it (it redoes a stage only when that completed)
    resume_log = tmp_path / "resumed.log"
    _onerec("train", *command[4:], log=resume_log)
    log_text = (run_dir / "run.log").read_text()
    assert "stage train: resuming" in log_text
    assert f"train: resumed from checkpoint {latest.name} (step {killed_at} of {total}" in log_text
    first_bar = TQDM_POSITION.search(resume_log.read_text(errors="replace"))
    assert first_bar is not None and (int(first_bar[1]), int(first_bar[2])) == (killed_at, total)
    _onerec(*command[3:], log=tmp_path / "rest.log")  # the stages after train, for the arms' metrics

    resumed, full = _json(run_dir, "train/result.json"), _json(uninterrupted, "train/result.json")
    # the last logging window's loss covers only the steps since the resume: the one number that may differ
    assert {**resumed, "final_loss": None} == {**full, "final_loss": None}
    assert (run_dir / "train/validation.csv").read_text() == (uninterrupted / "train/validation.csv").read_text()
    # a validation the kill cut off before its checkpoint is logged again, with the same values
    valid = {json.dumps(r, sort_keys=True) for r in _records(run_dir, "train/valid")}
    assert sorted(valid) == sorted(json.dumps(r, sort_keys=True) for r in _records(uninterrupted, "train/valid"))
    _assert_same_weights(
        _exported_state(run_dir / "train/best_model.pt"), _exported_state(uninterrupted / "train/best_model.pt")
    )
    assert sorted(p.name for p in (run_dir / "train/checkpoints").iterdir() if p != partial) == sorted(
        p.name for p in (uninterrupted / "train/checkpoints").iterdir()
    )
    assert _arm_metrics(run_dir) == _arm_metrics(uninterrupted)
    print(f"killed at step {killed_at} of {total}, resumed from there")


def test_same_seed_gives_the_same_results_and_another_seed_another_model(runs: BackgroundRuns) -> None:
    uninterrupted, again = runs.finished("uninterrupted"), runs.finished("again")
    for relpath in [
        "evaluate/metrics.json",
        "compare/comparison.json",
        *(f"evaluate/arms/{p.name}" for p in (uninterrupted / "evaluate/arms").glob("*.json")),
    ]:
        assert _json(again, relpath) == _json(uninterrupted, relpath), relpath
    for arms in (uninterrupted / "evaluate/arms").glob("*.npz"):
        with np.load(arms) as a, np.load(again / "evaluate/arms" / arms.name) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), arms.name
    assert (again / "compare/report.md").read_text() == (uninterrupted / "compare/report.md").read_text()
    _assert_same_weights(
        _exported_state(again / "train/best_model.pt"), _exported_state(uninterrupted / "train/best_model.pt")
    )

    # the seed also draws the synthetic world, so everything downstream of the data differs
    other = runs.finished("seed1")
    assert _json(other, "data/stats.json") != _json(uninterrupted, "data/stats.json")
    seed0, seed1 = _arm_metrics(uninterrupted)["onerec"], _arm_metrics(other)["onerec"]
    assert seed0.keys() == seed1.keys()
    assert all(seed0[k] != seed1[k] for k in ("ndcg@10", "recall@10", "coverage@10"))
    weights0 = _exported_state(uninterrupted / "train/best_model.pt")
    weights1 = _exported_state(other / "train/best_model.pt")
    assert any(not torch.equal(weights0[k], weights1[k]) for k in weights0)


def _children(pid: int) -> List[int]:
    """Processes whose parent is ``pid`` (from /proc/<pid>/stat: the field after the command name is the ppid)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _rank(pid: int) -> int:
    """The torchrun RANK in a process's environment (-1 when it has none or has gone)."""
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return -1
    ranks = [v[len(b"RANK=") :] for v in variables if v.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else -1


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_worker_killed_under_torchrun_ends_the_job_with_an_error_in_bounded_time(
    runs: BackgroundRuns, tmp_path: Path
) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    run_dir, log = tmp_path / "run", tmp_path / "torchrun.log"
    # torchrun needs data and tokenize done by one process: a finished run's, with the same data config
    shutil.copytree(runs.finished("uninterrupted"), run_dir, ignore=shutil.ignore_patterns(*STAGES[2:]))
    # more epochs than the kill lets it reach, so the kill lands in training whatever the machine's speed
    proc = _launch(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "torchrec_onerec",
            "train",
            TINY,
            f"run_dir={run_dir}",
            "train.optim.epochs=20",
            CHECKPOINT_EVERY,
            "train.collective_timeout_s=20",
        ],
        log,
    )
    try:
        _poll(lambda: bool(_complete_checkpoints(run_dir)), proc, log, "complete training checkpoint")
        workers = {_rank(pid): pid for pid in _children(proc.pid)}
        assert {0, 1} <= workers.keys(), f"torchrun's children and their ranks: {workers}"
        os.kill(workers[1], signal.SIGKILL)
        killed = time.monotonic()
        code = _wait(proc, log, timeout=DEAD_WORKER_BOUND_S)  # measured: under 1 s
        seconds = time.monotonic() - killed
    finally:
        _kill_group(proc)
    assert code != 0 and "SIGKILL" in log.read_text(errors="replace"), _tail(log)  # torchrun names the dead worker
    assert not _running(workers[0]), "rank 0 outlived torchrun"
    assert not (run_dir / "train" / "done.json").exists()
    print(f"torchrun exited with {code} {seconds:.1f} s after rank 1 was killed")
