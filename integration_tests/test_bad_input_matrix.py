"""A matrix of bad inputs to the ``onerec`` command: data files, configs, the tokenizer's codebook, training
checkpoints and exported models, and the CLI and ``recommend`` arguments.

Every case drives ``torchrec_onerec.cli.main`` and checks the contract of ``cli.py``: the command ends with exit
code 2 and one ``onerec COMMAND: error: ...`` line that names the problem (the file, line, column, key, value
or id), and the run directory is left without a false completion: the failing stage has no ``done.json`` (nor
the outputs a completed stage writes), the stages that completed before keep theirs, a config error writes
nothing, and ``recommend`` (read-only) changes no file. The cases that need a finished run corrupt a copy of one
small run (data -> tokenize -> train of ``configs/tiny.yaml``) built once for the module.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import pandas as pd
import pytest

from torchrec_onerec.cli import main
from torchrec_onerec.config import load_config
from torchrec_onerec.pipeline import run_pipeline, stage_closure
from torchrec_onerec.run_dir import load_tagged, save_tagged
from torchrec_onerec.train.export import EXPORT_FORMAT

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
ERROR_LINE = re.compile(r"^onerec [\w-]+: error: ")


def _run_main(argv: Sequence[str]) -> int:
    """``main``'s exit code, argparse's own exits (SystemExit) included."""
    try:
        return main(list(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)


def _error_line(err: str) -> str:
    """The one error line the CLI prints."""
    lines = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, err
    return lines[0]


def _truncate(path: Path, size: int = 100) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _checkpoint(run: Path) -> Path:
    (folder,) = (run / "train" / "checkpoints").iterdir()
    return folder


def _snapshot(folder: Path) -> Dict[str, Tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---- loaders: the data stage on crafted files -----------------------------------------------------------------


@dataclass(frozen=True)
class LoaderCase:
    """Files written into tmp_path, the overrides that point the data stage at them, the expected message parts
    (``{tmp}`` = tmp_path), and the command (``data``, or ``train`` for a split the data stage accepts)."""

    files: Dict[str, object]
    overrides: List[str]
    message: List[str]
    command: str = "data"


def _parquet_with_text_timestamp(path: Path) -> None:
    pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "timestamp": ["5", "abc"]}).to_parquet(path)


def _two_interactions_per_user() -> str:
    rows = [f"u{u},i{(u + k) % 5},{10 * u + k}" for u in range(4) for k in range(2)]
    return "user_id,item_id,timestamp\n" + "\n".join(rows) + "\n"


def _one_day_of_feedback() -> str:
    rows = [f"u{u},i{(u + k) % 7},{1000 * u + k},1,0,0" for u in range(4) for k in range(5)]
    return "user_id,item_id,timestamp,click,long_view,like\n" + "\n".join(rows) + "\n"


TABLE = ["data.source=table", "data.path={tmp}/t.csv"]
LOADER_CASES = {
    "table-missing-column": LoaderCase(
        {"t.csv": "user_id,item_id\n1,2\n"}, TABLE, ["{tmp}/t.csv", "no column 'timestamp'", "['user_id', 'item_id']"]
    ),
    "table-non-numeric-timestamp": LoaderCase(
        {"t.csv": "user_id,item_id,timestamp\n1,2,3\n1,3,abc\n"}, TABLE, ["{tmp}/t.csv line 3", "'timestamp'", "'abc'"]
    ),
    "table-empty-file": LoaderCase({"t.csv": ""}, TABLE, ["{tmp}/t.csv is empty"]),
    "table-header-only": LoaderCase(
        {"t.csv": "user_id,item_id,timestamp\n"}, TABLE, ["{tmp}/t.csv has a header but no data rows"]
    ),
    "table-missing-file": LoaderCase(
        {}, ["data.source=table", "data.path={tmp}/absent.csv"], ["{tmp}/absent.csv does not exist"]
    ),
    "table-non-numeric-feedback": LoaderCase(
        {"t.csv": "user_id,item_id,timestamp,click\n1,2,3,yes\n"},
        [*TABLE, "data.feedback_cols=[click]"],
        ["{tmp}/t.csv line 2", "'click'", "'yes'"],
    ),
    "table-duplicates-refused": LoaderCase(
        {"t.csv": "user_id,item_id,timestamp\n1,2,3\n1,2,3\n"},
        [*TABLE, "data.drop_duplicates=false"],
        ["{tmp}/t.csv line 3 repeats line 2", "data.drop_duplicates"],
    ),
    "table-unparsable-datetime": LoaderCase(
        {"t.csv": "user_id,item_id,timestamp\n1,2,yesterday\n"},
        [*TABLE, "data.timestamp_unit=datetime"],
        ["{tmp}/t.csv line 2", "unparsable timestamp 'yesterday'"],
    ),
    "table-header-not-utf8": LoaderCase(
        {"t.csv": "us\u00e9r,item_id,timestamp\na,b,1\n".encode("latin-1")},
        TABLE,
        ["{tmp}/t.csv line 1", "cannot parse the header"],
    ),
    "parquet-not-parquet": LoaderCase(
        {"t.parquet": "user_id,item_id,timestamp\n"},
        ["data.source=table", "data.path={tmp}/t.parquet"],
        ["{tmp}/t.parquet", "not a readable parquet file"],
    ),
    "parquet-text-timestamp": LoaderCase(
        {"t.parquet": _parquet_with_text_timestamp},
        ["data.source=table", "data.path={tmp}/t.parquet"],
        ["{tmp}/t.parquet row 1", "'timestamp'", "'abc'"],
    ),
    "movielens-without-u.data": LoaderCase(
        {"ml/README": "ratings to come\n"},
        ["data.source=movielens", "data.path={tmp}/ml"],
        ["{tmp}/ml", "u.data", "['README']"],
    ),
    "movielens-u.data-three-columns": LoaderCase(
        {"ml/u.data": "1\t2\t881250949\n"},
        ["data.source=movielens", "data.path={tmp}/ml"],
        ["{tmp}/ml/u.data", "cannot parse", "expected 4"],
    ),
    "kuairand-folder-without-log": LoaderCase(
        {"kr/README": "x\n"}, ["data.source=kuairand", "data.path={tmp}/kr"], ["{tmp}/kr/", "does not exist"]
    ),
    "sequence-user-on-two-lines": LoaderCase(
        {"s.txt": "u1 a b\nu2 c\nu1 d\n"},
        ["data.source=sequence", "data.path={tmp}/s.txt"],
        ["{tmp}/s.txt", "user 'u1' has more than one line (lines 1, 3)"],
    ),
    "sequence-not-utf8": LoaderCase(
        {"s.txt": "u1 a\nu2 caf\u00e9\n".encode("latin-1")},
        ["data.source=sequence", "data.path={tmp}/s.txt"],
        ["{tmp}/s.txt line 2", "byte 0xe9 is not UTF-8"],
    ),
    "split-label-column-missing": LoaderCase(
        {}, ["split.labels.swt=watch_time"], ["'watch_time'", "split.labels.swt", "'long_view'"]
    ),
    "split-protocol-b-empty-train-window": LoaderCase(
        {"t.csv": _one_day_of_feedback()},
        [*TABLE, "data.feedback_cols=[click,long_view,like]"],
        ["protocol B train window is empty", "valid_start="],
    ),
    # The data stage accepts a split without training samples (stages.py would have to check it); the train
    # stage then names the count.
    "split-without-training-samples": LoaderCase(
        {"t.csv": _two_interactions_per_user()},
        [
            *TABLE,
            "split.protocol=A",
            "tokenizer.embedding_source=collaborative",
            "tokenizer.embedding_dim=4",
            "tokenizer.codebook_sizes=[2,2]",
        ],
        ["0 training samples"],
        command="train",
    ),
}


@pytest.mark.parametrize("case", list(LOADER_CASES.values()), ids=list(LOADER_CASES))
def test_bad_data_files_are_named_and_no_stage_is_marked_done(
    case: LoaderCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(str(content))
    run = tmp_path / "run"
    overrides = [o.format(tmp=tmp_path) for o in case.overrides]
    assert _run_main([case.command, TINY, f"run_dir={run}", *overrides]) == 2
    error = _error_line(capsys.readouterr().err)
    for part in case.message:
        assert part.format(tmp=tmp_path) in error
    if case.command == "data":
        assert sorted(p.name for p in (run / "data").iterdir()) == ["started.json"]  # no stats, summary, done.json
    assert not (run / case.command / "done.json").exists()


# ---- configs: rejected before anything is written ---------------------------------------------------------------


CONFIG_CASES: Dict[str, Tuple[List[str], List[str]]] = {
    "unknown-key-override": (["data", TINY, "train.epochz=3"], ["unknown config key 'train.epochz'", "epochs"]),
    "wrong-type": (["data", TINY, "train.optim.epochs=abc"], ["'train.optim.epochs'", "'abc'", "Integer"]),
    "invalid-value": (["data", TINY, "split.session_items=0"], ["split.session_items=0 must be >= 1"]),
    "negative-epochs": (["train", TINY, "train.optim.epochs=-1"], ["train.optim.epochs=-1"]),
    "unknown-data-source": (["data", TINY, "data.source=csv"], ["data.source='csv'", "'table'"]),
    "codebook-too-small": (["tokenize", TINY, "tokenizer.codebook_sizes=[1]"], ["tokenizer.codebook_sizes=[1]"]),
    "model-history-differs-from-split": (
        ["data", TINY, "model.max_history=7"],
        ["model.max_history=7 differs from split.max_history=20"],
    ),
    "override-without-equals": (["data", TINY, "seed"], ["override 'seed' is not of the form key=value"]),
    "missing-config-file": (["run", "{tmp}/absent.yaml"], ["{tmp}/absent.yaml", "does not exist"]),
    "unparsable-config-file": (["data", "{tmp}/broken.yaml"], ["{tmp}/broken.yaml", "cannot parse"]),
    "unknown-key-in-config-file": (["data", "{tmp}/typo.yaml"], ["unknown config key 'trian'"]),
    "run-dir-is-a-file": (["data", TINY, "run_dir={tmp}/taken"], ["run_dir=", "taken' is a file"]),
    "section-set-to-a-scalar": (["data", TINY, "split=5"], ["'split'", "section"]),
    "override-value-yaml-cannot-read": (["data", TINY, "data.sep=,"], ["'data.sep=,'"]),
}
CONFIG_FILES = {"broken.yaml": "train: {epochs: 2\n", "typo.yaml": "trian:\n  epochs: 1\n", "taken": "a file\n"}


def _config_case(argv: List[str], message: List[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, text in CONFIG_FILES.items():
        (tmp_path / name).write_text(text)
    run = tmp_path / "run"
    argv = [a.format(tmp=tmp_path) for a in argv]
    if not any(a.startswith("run_dir=") for a in argv):
        argv.append(f"run_dir={run}")
    assert _run_main(argv) == 2
    error = _error_line(capsys.readouterr().err)
    for part in message:
        assert part.format(tmp=tmp_path) in error
    assert not run.exists()
    assert (tmp_path / "taken").read_text() == CONFIG_FILES["taken"]


@pytest.mark.parametrize("argv, message", list(CONFIG_CASES.values()), ids=list(CONFIG_CASES))
def test_bad_configs_are_named_and_nothing_is_written(
    argv: List[str], message: List[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _config_case(argv, message, tmp_path, capsys)


# ---- a finished run, corrupted: tokenizer, checkpoints, exported model, recommend ----------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data -> tokenize -> train of configs/tiny.yaml (a few seconds), copied by every case that corrupts it."""
    path = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", TINY, f"run_dir={path}"]) == 0
    return path


@pytest.fixture(scope="module")
def foreign_codebooks(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Codebooks of the tiny world built with other codebook sizes, and for another catalogue (100 items)."""
    root = tmp_path_factory.mktemp("foreign")
    books = {}
    for name, override in (
        ("other_config", "tokenizer.codebook_sizes=[4,4]"),
        ("other_catalogue", "data.synthetic.num_items=100"),
    ):
        assert main(["tokenize", TINY, f"run_dir={root / name}", override]) == 0
        books[name] = root / name / "tokenize" / "codebook.pt"
    return books


def _interrupted_after_checkpoint(run: Path) -> None:
    """What an interrupted train stage leaves: its checkpoints and started.json, no done.json nor result."""
    (run / "train" / "done.json").unlink()
    (run / "train" / "result.json").unlink()


def _model_of_another_config(run: Path) -> None:
    path = run / "train" / "best_model.pt"
    data = load_tagged(path, EXPORT_FORMAT, "save_exported")
    data["model_config"]["d_model"] = 16
    save_tagged(path, EXPORT_FORMAT, {k: v for k, v in data.items() if k != "format"})


def _later_failing_command(run: Path) -> None:
    """A later `onerec data` with a data file that does not exist: it fails, and config.yaml now holds its config."""
    assert main(["data", TINY, f"run_dir={run}", "data.source=table", f"data.path={run}/absent.csv"]) == 2


def _swap_codebook(name: str) -> Callable[[Path, Dict[str, Path]], None]:
    def swap(run: Path, books: Dict[str, Path]) -> None:
        shutil.copy(books[name], run / "tokenize" / "codebook.pt")

    return swap


@dataclass(frozen=True)
class RunCase:
    """A corruption of the finished run, the command that meets it and what it must say (``{run}`` = the copy).

    ``stage`` is the stage that fails (its done.json must be gone), ``kept`` the stages whose done.json must
    survive; ``stage=None`` marks a read-only command, which must leave every file as it was.
    """

    corrupt: Callable[[Path, Dict[str, Path]], None]
    argv: List[str]
    message: List[str]
    stage: str | None = None
    kept: Tuple[str, ...] = ("data", "tokenize", "train")
    exit_code: int = 2


def _each(*steps: Callable[[Path], None]) -> Callable[[Path, Dict[str, Path]], None]:
    def corrupt(run: Path, books: Dict[str, Path]) -> None:
        for step in steps:
            step(run)

    return corrupt


def _unchanged(run: Path, books: Dict[str, Path]) -> None:
    """No corruption: the argument itself is the bad input."""


TRAIN = ["train", TINY, "run_dir={run}"]
RESUME = ["run", TINY, "run_dir={run}"]
RECOMMEND = ["recommend", "{run}", "--users", "1"]
AFTER_TOKENIZE = ("data", "tokenize")
RUN_CASES = {
    # tokenizer: the codebook the train stage reads
    "codebook-truncated": RunCase(
        _each(lambda r: _truncate(r / "tokenize" / "codebook.pt")),
        TRAIN,
        ["{run}/tokenize/codebook.pt cannot be read", "truncated or corrupt"],
        "train",
        AFTER_TOKENIZE,
    ),
    "codebook-deleted": RunCase(
        _each(lambda r: (r / "tokenize" / "codebook.pt").unlink()),
        TRAIN,
        ["no codebook at {run}/tokenize/codebook.pt", "--force tokenize"],
        "train",
        AFTER_TOKENIZE,
    ),
    "codebook-not-a-codebook": RunCase(
        _each(lambda r: shutil.copy(r / "train" / "best_model.pt", r / "tokenize" / "codebook.pt")),
        TRAIN,
        ["{run}/tokenize/codebook.pt is not a codebook"],
        "train",
        AFTER_TOKENIZE,
    ),
    "codebook-of-other-codebook-sizes": RunCase(
        _swap_codebook("other_config"),
        TRAIN,
        ["codebook {run}/tokenize/codebook.pt", "tokenizer config"],
        "train",
        AFTER_TOKENIZE,
    ),
    "codebook-of-other-catalogue": RunCase(
        _swap_codebook("other_catalogue"),
        TRAIN,
        ["codes for 100 items but the catalogue has 120"],
        "train",
        AFTER_TOKENIZE,
    ),
    # checkpoints: an interrupted train stage resumes from its latest DCP checkpoint
    "checkpoint-shard-truncated": RunCase(
        _each(_interrupted_after_checkpoint, lambda r: _truncate(next(_checkpoint(r).glob("*.distcp")), 1000)),
        RESUME,
        ["training checkpoint {run}/train/checkpoints/step-", "incomplete or corrupt", "--force train"],
        "train",
        AFTER_TOKENIZE,
    ),
    "checkpoint-shard-deleted": RunCase(
        _each(_interrupted_after_checkpoint, lambda r: next(_checkpoint(r).glob("*.distcp")).unlink()),
        RESUME,
        ["incomplete or corrupt", "FileNotFoundError", "__0_0.distcp"],
        "train",
        AFTER_TOKENIZE,
    ),
    "checkpoint-metadata-truncated": RunCase(
        _each(_interrupted_after_checkpoint, lambda r: _truncate(_checkpoint(r) / ".metadata", 20)),
        RESUME,
        ["training checkpoint {run}/train/checkpoints/step-", "incomplete or corrupt"],
        "train",
        AFTER_TOKENIZE,
    ),
    "checkpoint-meta-json-cut-short": RunCase(
        _each(_interrupted_after_checkpoint, lambda r: _truncate(_checkpoint(r) / "meta.json", 10)),
        RESUME,
        ["{run}/train/checkpoints/step-", "is not a readable training checkpoint"],
        "train",
        AFTER_TOKENIZE,
    ),
    "checkpoint-of-another-config": RunCase(
        _each(
            _interrupted_after_checkpoint,
            lambda r: (_checkpoint(r) / "meta.json").write_text(
                json.dumps({**json.loads((_checkpoint(r) / "meta.json").read_text()), "fingerprint": "0" * 24})
            ),
        ),
        RESUME,
        ["was written for another model config", "fingerprint 000000000000000000000000"],
        "train",
        AFTER_TOKENIZE,
    ),
    # the exported model that recommend serves
    "exported-model-truncated": RunCase(
        _each(lambda r: _truncate(r / "train" / "best_model.pt")),
        RECOMMEND,
        ["{run}/train/best_model.pt cannot be read", "truncated or corrupt"],
    ),
    "exported-model-deleted": RunCase(
        _each(lambda r: (r / "train" / "best_model.pt").unlink()),
        RECOMMEND,
        ["{run}/train/best_model.pt does not exist"],
    ),
    "exported-model-of-another-config": RunCase(
        _each(_model_of_another_config),
        RECOMMEND,
        ["{run}/train/best_model.pt holds a model with config", "'d_model': 16"],
    ),
    "summary-cut-short": RunCase(
        _each(lambda r: _truncate(r / "train" / "summary.json", 5)),
        RECOMMEND,
        ["{run}/train/summary.json is not valid JSON"],
    ),
    # recommend: ids, arguments, and run directories it cannot serve
    "recommend-unknown-user": RunCase(
        _unchanged, ["recommend", "{run}", "--users", "1,nobody"], ["['nobody']", "not in the run's data"]
    ),
    "recommend-without-trained-model": RunCase(
        _each(lambda r: (r / "train" / "done.json").unlink()),
        RECOMMEND,
        ["{run}/train/done.json is missing"],
        kept=AFTER_TOKENIZE,
    ),
    "recommend-not-a-run-directory": RunCase(
        _unchanged, ["recommend", "{run}/absent", "--users", "1"], ["{run}/absent/config.yaml is missing"]
    ),
    "recommend-arm-not-trained": RunCase(
        _unchanged, [*RECOMMEND, "--arm", "onerec_ipa"], ["{run}/align/done.json is missing"]
    ),
    "recommend-zero-sessions": RunCase(_unchanged, [*RECOMMEND, "--sessions", "0"], ["num_sessions=0 must be >= 1"]),
    "recommend-no-users": RunCase(_unchanged, ["recommend", "{run}", "--users", ","], ["--users is empty"]),
    "recommend-unknown-device": RunCase(_unchanged, [*RECOMMEND, "--device", "tpu"], ["device='tpu'"]),
    "recommend-older-run-dir-after-a-failed-command-changed-the-config": RunCase(
        _each(lambda r: (r / "train" / "config.yaml").unlink(), _later_failing_command),
        RECOMMEND,
        ["{run}/config.yaml is not the config the train stage completed with"],
        kept=AFTER_TOKENIZE[1:] + ("train",),
    ),
    "force-of-an-unknown-stage": RunCase(
        _unchanged, [*RESUME, "--force", "trian"], ["argument --force: invalid choice: 'trian'"]
    ),
}


@pytest.mark.parametrize("case", list(RUN_CASES.values()), ids=list(RUN_CASES))
def test_a_corrupted_run_is_named_and_keeps_its_completed_stages(
    case: RunCase,
    finished_run: Path,
    foreign_codebooks: Dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    case.corrupt(run, foreign_codebooks)
    before = _snapshot(run)
    capsys.readouterr()
    assert _run_main([a.format(run=run) for a in case.argv]) == case.exit_code
    error = _error_line(capsys.readouterr().err)
    for part in case.message:
        assert part.format(run=run) in error
    if case.stage is None:
        assert _snapshot(run) == before
        assert not (run / "absent").exists()
    else:
        assert not (run / case.stage / "done.json").exists()
    for stage in case.kept:
        assert (run / stage / "done.json").is_file(), stage


# ---- after the error: the advice in the message recovers the run ------------------------------------------------


def test_a_corrupt_checkpoint_is_recovered_by_training_over(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _interrupted_after_checkpoint(run)
    _truncate(next(_checkpoint(run).glob("*.distcp")), 1000)
    assert main(["run", TINY, f"run_dir={run}"]) == 2
    assert main(["train", TINY, f"run_dir={run}"]) == 2  # an interrupted stage resumes: the same checkpoint
    assert main(["run", TINY, f"run_dir={run}", "--force", "train"]) == 0  # the message's advice
    out = capsys.readouterr().out
    assert "stage data: complete, skipped" in out and "stage tokenize: complete, skipped" in out
    assert (run / "train" / "done.json").is_file()
    assert main(["recommend", str(run), "--users", "1", "--sessions", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)["sessions"]) == 2


def test_after_a_failed_command_the_good_config_reuses_the_completed_stages(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _later_failing_command(run)
    result = run_pipeline(load_config(TINY, [f"run_dir={run}"]), stages=stage_closure("train"))
    assert result["skipped"] == ["tokenize", "train"]  # the failed data stage is redone, nothing else
    assert main(["recommend", str(run), "--users", "1"]) == 0


def test_recommend_serves_the_config_its_model_was_trained_with_after_a_failed_command(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _later_failing_command(run)
    assert "absent.csv" in (run / "config.yaml").read_text()  # the run's config.yaml is the failed command's
    capsys.readouterr()
    assert main(["recommend", str(run), "--users", "1", "--sessions", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)["sessions"]) == 2
