"""The run directory: its lock, `config.json`, `metrics.jsonl`, and the resume contract.

A workdir holds one run. `lock` makes it exclusive: a second process on the same workdir is refused
in one line naming the first (an advisory `fcntl.flock` on `workdir/.lock`, released by the kernel
when the holder exits or is killed, so a stale lock never blocks a resume). Every file is written
to a temporary name and renamed, so a kill or a full disk leaves the previous version.

The resume contract (`resume_config`): `--workdir W --resume` continues the run that
`W/config.json` describes; flags given with it may change only `RESUMABLE` fields, any other
differing flag is refused, naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from train.config import Config

__all__ = [
    "RESUMABLE",
    "WorkdirError",
    "lock",
    "read_config",
    "resume_config",
    "write_config",
    "write_metrics",
]

RESUMABLE = (
    "epochs",
    "early_stopping",
    "export_torch",
    "plot",
    "data_dir",
    "cache_dir",
    "devices",
)
"""Fields a resumed run may change: how long it goes on, when it stops early, what it writes at
the end, where its data lives, and how many devices share the global batch (the same results with
`batch_norm="sync"`; per-device statistics with `"local"`). Everything else would make it another
run."""


class WorkdirError(ValueError):
    """The workdir is in use, holds no run, or holds files that are not a run's (one line)."""


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
    """Creates `workdir` if needed and holds its exclusive lock for the `with` block.

    Raises:
      WorkdirError: `workdir` is a file, or another process holds the lock (naming its pid).
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise WorkdirError(
                f"{workdir} is in use by another run (process {holder}); wait for it to finish "
                "or choose another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_config(workdir: str) -> Config:
    """The `Config` in `workdir/config.json`.

    Raises:
      WorkdirError: the file is missing or is not a run configuration (naming the file).
    """
    path = os.path.join(workdir, "config.json")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise WorkdirError(f"{path} does not exist: {workdir} holds no run to resume") from None
    try:
        return Config.from_json(data.decode())  # garbage bytes: UnicodeDecodeError, a ValueError
    except (ValueError, TypeError) as e:
        raise WorkdirError(f"{path} is not a run configuration: {e}") from None


def write_config(workdir: str, config: Config) -> str:
    """Writes `workdir/config.json` (atomically) and returns its path."""
    path = os.path.join(workdir, "config.json")
    _write_atomic(path, config.to_json() + "\n")
    return path


def write_metrics(workdir: str, history: list[dict[str, Any]]) -> str:
    """Writes `workdir/metrics.jsonl`, one JSON object per epoch (atomically); returns the path."""
    path = os.path.join(workdir, "metrics.jsonl")
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in history))
    return path


def resume_config(
    old: Config, new: Config | Mapping[str, Any], log: Callable[[str], None] = print
) -> Config:
    """The config a resumed run continues with: `old` (from config.json) plus the safe changes.

    Args:
      old: the run's saved configuration.
      new: a full `Config` (library callers: every field is compared) or a mapping of the fields
        given explicitly (the CLI: only those are compared).
      log: where a note about a changed `epochs` goes.

    Returns:
      `old` with the `RESUMABLE` fields of `new` and `resume=True`. A run that was initialised
      from a torch checkpoint keeps its saved width (it came from that checkpoint).

    Raises:
      WorkdirError: a non-resumable field differs (naming the flag and both values).

    Examples:
      >>> old = Config(epochs=4, lr=0.1)
      >>> resume_config(old, {"epochs": 6}, log=print).epochs
      --epochs 6 (was 4): the cosine schedule keeps T_max=4 ...
      6
      >>> resume_config(old, {"lr": 0.5})
      Traceback (most recent call last):
      ...
      train.workdir.WorkdirError: --resume with settings that differ from the saved run: ...
    """
    given = dataclasses.asdict(new) if isinstance(new, Config) else dict(new)
    given.pop("resume", None)
    if isinstance(new, Config) and old.init_from is not None:
        given.pop("width", None)  # the saved width is the checkpoint's (train.pytorch.init_from)
    old_values = dataclasses.asdict(old)
    differ = [
        name
        for name, value in given.items()
        if name not in RESUMABLE and _normal(value) != _normal(old_values[name])
    ]
    if differ:
        name = differ[0]
        raise WorkdirError(
            f"--resume with settings that differ from the saved run: {name}={given[name]!r} "
            f"(was {old_values[name]!r}): --{name.replace('_', '-')} cannot change; only "
            + ", ".join("--" + n.replace("_", "-") for n in RESUMABLE)
            + " may (start a new --workdir for other settings)"
        )
    changes = {name: given[name] for name in RESUMABLE if name in given}
    if changes.get("epochs", old.epochs) != old.epochs:
        if old.schedule == "cosine" and old.t_max is None:
            changes["t_max"] = old.epochs
            log(
                f"--epochs {changes['epochs']} (was {old.epochs}): the cosine schedule keeps "
                f"T_max={old.epochs} of the original run, so past epoch {old.epochs} the LR rises "
                "again (torch's CosineAnnealingLR); start a new run for a longer schedule"
            )
        else:
            log(
                f"--epochs {changes['epochs']} (was {old.epochs}): training goes on with the same "
                f"{old.schedule} schedule"
            )
    return dataclasses.replace(old, **changes, resume=True)


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
