"""jaxloss-train: a Flax ResNet trained with jaxloss losses and torch-exact schedules/optimisers.

Flags -> `Config` -> `train.loop.train_and_evaluate(config, workdir)`. With no arguments it trains
a width-24 CIFAR ResNet-18 on the embedded digits (about a minute on a 2-core CPU, >= 95%
validation accuracy) and prints where it wrote its results. `--workdir W --resume` continues the
run W/config.json describes (see `train.workdir` for what may change). Every failure is one
`error: ...` line and exit status 1 (2 for a bad flag); Ctrl-C exits 130 with the resume command.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from train.names import COMMAND as _PROG

if TYPE_CHECKING:
    from train.config import Config

__all__ = ["build_parser", "config_from_flags", "explicit_flags", "main", "parse_flags"]

# This module imports nothing heavy at the top (jax comes with train.config and train.flags), so
# `main` installs its Ctrl-C handler within milliseconds of start-up: a SIGINT that arrived
# while jax was importing used to be swallowed by one of jax's gc callbacks, and the run went on.
_TRAIN_EXTRA = ("flax", "optax", "orbax.checkpoint", "tensorflow_datasets", "grain", "tqdm")
_RUN: dict[str, str | None] = {"workdir": None}  # what the Ctrl-C handler reports


def build_parser() -> argparse.ArgumentParser:
    """`train.flags.build_parser` (imported on first use)."""
    from train import flags

    return flags.build_parser()


def parse_flags(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`train.flags.parse_flags` (imported on first use)."""
    from train import flags

    return flags.parse_flags(argv)


def config_from_flags(args: argparse.Namespace) -> Config:
    """`train.flags.config_from_flags` (imported on first use)."""
    from train import flags

    return flags.config_from_flags(args)


def explicit_flags(argv: Sequence[str] | None) -> dict[str, Any]:
    """`train.flags.explicit_flags` (imported on first use)."""
    from train import flags

    return flags.explicit_flags(argv)


def _resume_config(argv: Sequence[str] | None, args: argparse.Namespace) -> Config:
    """`--resume`: the saved run's config with the flags given now (checked by the loop)."""
    import dataclasses

    from train import workdir as run_dir

    if args.workdir is None:
        raise ValueError("--resume needs the --workdir of the run to continue")
    if args.preset is not None:
        raise ValueError(
            "--preset cannot be combined with --resume: the run's settings come "
            f"from {os.path.join(args.workdir, 'config.json')}"
        )
    if not os.path.isdir(args.workdir):
        raise ValueError(f"--resume: no such workdir {args.workdir}")
    old = run_dir.read_config(args.workdir)
    changes = {**explicit_flags(argv), "resume": True}  # --resume itself is among the flags
    return dataclasses.replace(old, **changes)


def _error_line(e: BaseException) -> str:
    """One line for any failure.

    The deepest OSError of the exception chain if there is one (the real cause of a failed save,
    e.g. a full disk), else the exception's first line.
    """
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, OSError):
            e = cause
        # `raise ... from None` means the context is not the cause (e.g. the lock's EAGAIN)
        suppressed = cause.__suppress_context__
        cause = cause.__cause__ or (None if suppressed else cause.__context__)
    text = (str(e).strip().splitlines() or [""])[0]
    if isinstance(e, (ValueError, TypeError)) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _on_interrupt(signum: int, frame: Any) -> None:
    """SIGINT: say how to continue and leave at once (exit 130).

    `os._exit` skips interpreter teardown, which can crash while XLA is compiling in another
    thread; what is on disk is as safe as after a kill: checkpoints and metrics.jsonl are
    written atomically, so the last committed epoch is intact.
    """
    workdir = _RUN["workdir"]
    latest = os.path.join(workdir or "", "checkpoints", "latest")
    done = (
        workdir is not None
        and os.path.isdir(latest)
        and any(name.isdigit() for name in os.listdir(latest))
    )
    if done:
        message = f"interrupted; continue with: {_PROG} --workdir {workdir} --resume"
    else:
        message = "interrupted before the first epoch was saved; nothing to resume"
    try:
        sys.stdout.flush()
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def _missing_train_extra() -> list[str]:
    return [name for name in _TRAIN_EXTRA if importlib.util.find_spec(name.split(".")[0]) is None]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (0, 1 for an error, 2 for a bad flag)."""
    handle = threading_main()  # only the main thread may set signal handlers
    previous = signal.getsignal(signal.SIGINT)
    if handle:
        _RUN["workdir"] = None
        signal.signal(signal.SIGINT, _on_interrupt)
    workdir = None
    primary = True
    try:
        args = parse_flags(argv)
        workdir = args.workdir
        missing = _missing_train_extra()
        if missing:
            raise ValueError(
                f"the trainer needs the [train] extra (missing: {', '.join(missing)}): "
                "pip install 'jaxloss[train]'"
            )
        config = _resume_config(argv, args) if args.resume else config_from_flags(args)
        if workdir is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            workdir = os.path.join("runs", f"{stamp}_{config.dataset}_{config.model}")
        _RUN["workdir"] = workdir
        from train import loop, parallel, runtime  # heavy imports once the flags are good

        several = args.coordinator is not None or "JAX_COORDINATOR_ADDRESS" in os.environ
        if several and args.workdir is None:
            raise ValueError("a run of several processes needs --workdir (one, seen by all)")
        if parallel.initialize(args.coordinator, args.num_processes, args.process_id):
            primary = _is_primary()
        if args.malloc == "tuned":
            runtime.tune_malloc()
        summary = loop.train_and_evaluate(config, workdir)
    except KeyboardInterrupt:  # no handler installed (not the main thread)
        print(f"interrupted; continue with: {_PROG} --workdir {workdir} --resume", file=sys.stderr)
        return 130
    except Exception as e:  # every failure is one line; JAXLOSS_TRACEBACK=1 shows the traceback
        if os.environ.get("JAXLOSS_TRACEBACK"):
            traceback.print_exc()
        print(f"error: {_error_line(e)}", file=sys.stderr)
        return 1
    finally:
        if handle:
            signal.signal(signal.SIGINT, previous)
    if not primary:  # process 0 says it
        return 0
    if "val_accuracy" in summary:
        print(
            f"final: val accuracy {summary['val_accuracy']:.4f}, val macro-F1 "
            f"{summary['val_f1']:.4f}"
        )
    outputs = "config.json, metrics.jsonl, checkpoints/" + (", curves.png" if config.plot else "")
    print(f"results written to {summary['workdir']} ({outputs})")
    if "export_torch" in summary:
        print(f"torch state_dict written to {summary['export_torch']}")
    return 0


def _is_primary() -> bool:
    import jax

    return jax.process_index() == 0


def threading_main() -> bool:
    """Whether this is the main thread (the only one that may set signal handlers)."""
    import threading

    return threading.current_thread() is threading.main_thread()
