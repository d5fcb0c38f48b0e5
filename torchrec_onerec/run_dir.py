"""The run directory: where one run keeps its resolved config, log, metrics and artefacts.

Layout::

    <run_dir>/config.yaml          the resolved config of the last invocation
    <run_dir>/run.log              the log of every invocation (appended)
    <run_dir>/metrics.jsonl        one JSON object per logged metric record (appended)
    <run_dir>/<stage>/...          each stage's artefacts, ``<stage>/started.json`` when it began,
                                   ``<stage>/config.yaml`` (the config it completed with) and
                                   ``<stage>/done.json`` once it completed

Both markers record the fingerprint of the config sections the stage depends on; a later run skips the stage
only when ``done.json`` matches, and lets an interrupted stage resume its partial work (training checkpoints)
only when ``started.json`` matches, so a changed config never reuses stale artefacts. Files are written
to a temporary name and renamed, so an interrupted run never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from torchrec_onerec.errors import ConfigError

LOG = logging.getLogger("torchrec_onerec")


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-serialisable object (config sections, file lists)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON document in ``path``; a file that is not valid JSON is an error naming it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not valid JSON (half-written or edited by hand).
    """
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}): it was cut short or edited; redo the stage that "
            "writes it (onerec run CONFIG --force STAGE)"
        ) from None


def load_torch_file(path: Path, writer: str) -> Any:
    """``torch.load`` of a file of tensors and plain data, on the CPU; an unreadable file is an error naming it.

    Args:
        path (Path): the file.
        writer (str): the function that writes such files (named in the error).

    Raises:
        ValueError: the file is truncated, corrupt or not a torch file.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "m.pt"
        >>> _ = f.write_bytes(b"PK not a zip")
        >>> load_torch_file(f, "save_tagged")
        Traceback (most recent call last):
        ...
        ValueError: ... cannot be read (RuntimeError: ...): it is truncated or corrupt; ...
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a cut-short file (zip, pickle, EOF, OS errors)
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise ValueError(
            f"{path} cannot be read ({type(exc).__name__}: {reason}): it is truncated or corrupt; "
            f"redo the stage that writes it ({writer}): onerec run CONFIG --force STAGE"
        ) from None


def save_tagged(path: Path, tag: str, payload: Dict[str, Any]) -> None:
    """``torch.save`` ``{"format": tag, **payload}`` through a temporary file and a rename (never half-written).

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "m.pt"
        >>> save_tagged(f, "demo/1", {"rows": 3})
        >>> load_tagged(f, "demo/1", "save_tagged")["rows"]
        3
        >>> load_tagged(f, "other/1", "save_other")
        Traceback (most recent call last):
        ...
        ValueError: ... is not a file written by save_other (other/1)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": tag, **payload}, tmp)
    os.replace(tmp, path)


def load_tagged(path: Path, tag: str, writer: str) -> Dict[str, Any]:
    """Read a ``save_tagged`` file (tensors and plain data only), refusing any other format.

    Args:
        path (Path): the file.
        tag (str): the format tag it must carry.
        writer (str): the function that writes such files (named in the error).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not of format ``tag``, or is truncated or corrupt.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist (it is written by {writer})")
    data = load_torch_file(path, writer)
    if not isinstance(data, dict) or data.get("format") != tag:
        raise ValueError(f"{path} is not a file written by {writer} ({tag})")
    return data


class RunDir:
    """A run directory on disk.

    Args:
        path: the folder; created if missing.

    Raises:
        ConfigError: ``path`` is a file, or the folder cannot be created (the message names ``run_dir``).

    Example:
        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.write_json("data/stats.json", {"users": 3})
        >>> run.read_json("data/stats.json")
        {'users': 3}
        >>> run.is_done("data", "abc"), run.mark_done("data", "abc"), run.is_done("data", "abc")
        (False, None, True)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run_dir={str(path)!r} is a file; set run_dir to a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"run_dir={str(path)!r} cannot be created ({exc.strerror}: {exc.filename}); set "
                "run_dir to a writable folder"
            ) from None

    def stage_dir(self, stage: str) -> Path:
        """The artefact folder of one stage (created)."""
        folder = self.path / stage
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def recorded_file(self, stage: str, recorded: str | os.PathLike) -> Path:
        """A file a stage recorded (in its ``summary.json``) under its own folder, found in this run directory:
        a run directory may have been moved or copied, or named by a relative path from another working
        directory, since. A path outside any ``<stage>/`` folder is returned as recorded.

        Example:
            >>> import tempfile
            >>> run = RunDir(tempfile.mkdtemp())
            >>> moved = run.recorded_file("align", "old/place/align/models/iteration-2.pt")
            >>> moved == run.path / "align" / "models" / "iteration-2.pt"
            True
        """
        parts = Path(recorded).parts
        if stage not in parts:
            return Path(recorded)
        last = len(parts) - 1 - parts[::-1].index(stage)
        return self.path.joinpath(*parts[last:])

    def write_json(self, relpath: str, obj: Any) -> None:
        atomic_write_text(self.path / relpath, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")

    def read_json(self, relpath: str) -> Any:
        return read_json(self.path / relpath)

    def write_text(self, relpath: str, text: str) -> None:
        atomic_write_text(self.path / relpath, text)

    def log_metrics(self, stage: str, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        """Append one record to ``metrics.jsonl``."""
        record = {"stage": stage, "time": time.time(), **({"step": step} if step is not None else {}), **metrics}
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, sort_keys=True, default=_json_default) + "\n")

    def is_done(self, stage: str, stage_fingerprint: str) -> bool:
        """True when ``stage`` completed with the same input fingerprint."""
        return self._marker_matches(f"{stage}/done.json", stage_fingerprint)

    def was_started(self, stage: str, stage_fingerprint: str) -> bool:
        """True when ``stage`` was last started with the same input fingerprint (its partial work may resume)."""
        return self._marker_matches(f"{stage}/started.json", stage_fingerprint)

    def mark_done(self, stage: str, stage_fingerprint: str) -> None:
        self.write_json(f"{stage}/done.json", {"fingerprint": stage_fingerprint, "finished": time.time()})

    def mark_started(self, stage: str, stage_fingerprint: str) -> None:
        self.write_json(f"{stage}/started.json", {"fingerprint": stage_fingerprint, "started": time.time()})

    def _marker_matches(self, relpath: str, stage_fingerprint: str) -> bool:
        marker = self.path / relpath
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text()).get("fingerprint") == stage_fingerprint
        except json.JSONDecodeError:
            return False

    def clear_done(self, stage: str) -> None:
        (self.path / stage / "done.json").unlink(missing_ok=True)

    def attach_log(self) -> logging.Handler:
        """Send the package logger to ``run.log`` (and keep console output); returns the file handler."""
        handler = logging.FileHandler(self.path / "run.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        return handler


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays, paths: the values metrics commonly hold."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
