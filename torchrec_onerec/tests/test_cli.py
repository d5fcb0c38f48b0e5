import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchrec_onerec.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


def test_data_command_writes_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", TINY, f"run_dir={tmp_path}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "data" / "stats.json").read_text())
    assert printed == saved
    assert saved["dataset"]["users"] == 200 and saved["split"]["protocol"] == "B"
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "run.log").is_file()


def test_run_skips_completed_stages_and_force_redoes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", TINY, f"run_dir={tmp_path}"]) == 0
    first = capsys.readouterr().out
    assert "stage data: done" in first and "stage tokenize: done" in first
    assert (tmp_path / "tokenize" / "codebook.pt").is_file()
    assert main(["run", TINY, f"run_dir={tmp_path}", "--force", "tokenize"]) == 0
    second = capsys.readouterr().out
    assert "stage data: complete, skipped" in second and "stage tokenize: done" in second
    # A changed tokenizer config invalidates the tokenizer stage only.
    assert main(["run", TINY, f"run_dir={tmp_path}", "tokenizer.codebook_sizes=[4,4]"]) == 0
    third = capsys.readouterr().out
    assert "stage data: complete, skipped" in third and "stage tokenize: done" in third


def test_tokenize_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokenize", TINY, f"run_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "collision rate before disambiguation" in out
    report = json.loads((tmp_path / "tokenize" / "report.json").read_text())
    assert report["num_items"] == 120


def test_item_id_leaf_trains_and_generates_real_items(tmp_path: Path) -> None:
    overrides = [
        f"run_dir={tmp_path}",
        "tokenizer.codebook_sizes=[8]",
        "tokenizer.disambiguation=item",
        "train.optim.epochs=1",
        "compare.arms=[onerec]",
        "compare.baseline=onerec",
    ]
    assert main(["evaluate", TINY, *overrides]) == 0
    report = json.loads((tmp_path / "tokenize" / "report.json").read_text())
    assert report["vocab_sizes"] == [8, 120]
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["arms"]["onerec"]["metrics"]
    assert metrics["legality"] == 1.0 and metrics["repeat_rate"] == 0.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", TINY, "split.max_hist=3"], "unknown config key 'split.max_hist'"),
        (["data", "no/such.yaml"], "no/such.yaml"),
        (["data", TINY, "data.source=table"], "data.path is required"),
        (["data", TINY, "data.source=movielens", "data.path=/nonexistent/ml"], "/nonexistent/ml"),
        (["tokenize", TINY, "tokenizer.codebook_sizes=[500]"], "500"),
    ],
)
def test_bad_input_exits_2_with_a_named_problem(
    argv: list, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, f"run_dir={tmp_path}"] if argv[1] == TINY else argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "tokenize" / "done.json").exists()


def test_module_entry_point_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "torchrec_onerec", "config", TINY, "seed=9"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert "seed: 9" in proc.stdout
