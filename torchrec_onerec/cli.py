"""The ``onerec`` command: a thin argparse layer over the typed pipeline functions in ``pipeline.py``.

Usage::

    onerec run CONFIG [key=value ...] [--force STAGE]   every stage that exists, resumable
    onerec data CONFIG [key=value ...]                 load, validate, split; print and write statistics
    onerec tokenize CONFIG [key=value ...]             item embeddings -> semantic IDs, with a report
    onerec train CONFIG [key=value ...]                train the generative model (torchrun: -m torchrec_onerec)
    onerec train-reward CONFIG [key=value ...]         train the session reward model (protocol B data)
    onerec align CONFIG [key=value ...]                iterative preference alignment (DPO) to the reward model
    onerec cascade CONFIG [key=value ...]              train the cascade baseline (retrieval -> ranking)
    onerec evaluate CONFIG [key=value ...]             test metrics of every arm of compare.arms, same users
    onerec compare CONFIG [key=value ...]              intervals and lifts over the baseline arm, report + plots
    onerec tune CONFIG [key=value ...]                 choose on validation over the tune section's space (Optuna),
                                                       then score the best config on test once
    onerec config CONFIG [key=value ...]               print the resolved config
    onerec config-reference                            every config key: type, default, meaning (docs/CONFIG.md)
    onerec recommend RUN_DIR --users ID[,ID...] [--sessions R] [--arm ARM] [--exclude-history]
                                                       sessions for users (raw ids) as JSON lines, from
                                                       OneRec's models or the run's cascade (--arm cascade)

Errors in the input (config keys, data files, ids) end the command with exit code 2 and one message that
names the problem; nothing half-written is left looking complete in the run directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from torchrec_onerec import __version__
from torchrec_onerec.config import ConfigError, OneRecConfig, load_config, to_yaml
from torchrec_onerec.config_reference import render_reference
from torchrec_onerec.pipeline import STAGES, run_pipeline, stage_closure
from torchrec_onerec.recommend import SERVED_ARMS, load_recommender
from torchrec_onerec.stages import STAGE_LIST

EXIT_BAD_INPUT = 2


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a YAML file from configs/ (or your own)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=1 split.max_history=20")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onerec", description="OneRec generative recommender on TorchRec")
    parser.add_argument("--version", action="version", version=f"torchrec_onerec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every stage of the pipeline (completed stages are skipped)")
    _add_config_args(run)
    run.add_argument("--force", action="append", default=[], choices=list(STAGES), help="redo this stage")
    for stage in STAGE_LIST:
        p = sub.add_parser(stage.name, help=stage.help)
        _add_config_args(p)
    search = sub.add_parser(
        "tune",
        help="choose a config on the validation users (the tune section's space, Optuna), then score it on test once",
    )
    _add_config_args(search)
    show = sub.add_parser("config", help="print the resolved config")
    _add_config_args(show)
    sub.add_parser("config-reference", help="print every config key with its type, default and meaning (markdown)")
    rec = sub.add_parser("recommend", help="sessions for users of a finished run, as JSON lines")
    rec.add_argument("run_dir", help="a run directory that `onerec run` completed")
    rec.add_argument("--users", required=True, help="comma-separated user ids, as the data names them")
    rec.add_argument("--sessions", type=int, default=None, help="sessions per user (default eval.num_return)")
    rec.add_argument(
        "--arm",
        default="onerec",
        choices=list(SERVED_ARMS),
        help="which trained model serves (OneRec's or the cascade)",
    )
    rec.add_argument(
        "--exclude-history", action="store_true", default=None, help="never recommend an item of the user's history"
    )
    rec.add_argument("--device", default=None, help="cpu, cuda ... (default: the run's device setting)")
    return parser


def _command_recommend(args: argparse.Namespace) -> str:
    recommender = load_recommender(args.run_dir, arm=args.arm, device=args.device)
    users = [u for u in args.users.split(",") if u]
    if not users:
        raise ValueError("--users is empty; give comma-separated user ids, e.g. --users 12,40")
    rows = recommender.recommend(users, num_sessions=args.sessions, exclude_history=args.exclude_history)
    return "\n".join(json.dumps(row) for row in rows)


def _command_run(cfg: OneRecConfig, args: argparse.Namespace) -> Dict[str, object]:
    return run_pipeline(cfg, stages=STAGES, force=args.force)


def _command_stage(stage: str) -> Callable[[OneRecConfig, argparse.Namespace], Dict[str, object]]:
    def command(cfg: OneRecConfig, args: argparse.Namespace) -> Dict[str, object]:
        # A stage asked for by name is redone when it completed, and resumes from its checkpoints when it was
        # interrupted; the stages it needs are reused when complete.
        return run_pipeline(cfg, stages=stage_closure(stage, cfg), redo_if_done=[stage])

    return command


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``onerec`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.command == "recommend":
            print(_command_recommend(args))
            return 0
        if args.command == "config-reference":
            print(render_reference(), end="")
            return 0
        if args.command == "tune":
            from torchrec_onerec.tune import tune  # optuna is imported only by the command that uses it

            found = tune(args.config, list(args.overrides))
            print(f"best config: {found.best_config} (validation score {found.best_score:.4f})")
            if found.test_run is not None:
                print(_render("run", found.test_run))
            return 0
        cfg = load_config(args.config, list(args.overrides))
        if args.command == "config":
            print(to_yaml(cfg), end="")
            return 0
        commands: Dict[str, Callable[[OneRecConfig, argparse.Namespace], Dict[str, object]]] = {
            "run": _command_run,
            **{stage: _command_stage(stage) for stage in STAGES},
        }
        result = commands[args.command](cfg, args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"onerec {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(_render(args.command, result))
    return 0


def _render(command: str, result: Dict[str, object]) -> str:
    """What a command prints: a stage's own output for a single stage, a short account for ``run``."""
    run_dir = Path(str(result["run_dir"]))
    if command == "data":
        return json.dumps(result["stages"]["data"], indent=2, sort_keys=True)  # type: ignore[index]
    if command == "tokenize":
        return (run_dir / "tokenize" / "report.md").read_text()
    if command == "evaluate":
        return (run_dir / "evaluate" / "report.md").read_text()
    if command == "compare":
        return (run_dir / "compare" / "report.md").read_text()
    seconds: Dict[str, float] = result["seconds"]  # type: ignore[assignment]
    stages: Dict[str, object] = result["stages"]  # type: ignore[assignment]
    lines = [
        f"stage {stage}: " + (f"done in {seconds[stage]:.1f} s" if stage in seconds else "complete, skipped")
        for stage in stages
    ]
    lines.append(f"run directory: {run_dir} (config.yaml, run.log, metrics.jsonl, one folder per stage)")
    if (run_dir / "compare" / "report.md").is_file():
        lines.append(f"report: {run_dir / 'compare' / 'report.md'}")
    return "\n".join(lines)
