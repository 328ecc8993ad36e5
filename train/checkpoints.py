"""Orbax checkpoints: the latest epoch (to resume), the best by validation loss and by macro-F1.

Three `orbax.checkpoint.CheckpointManager`s in `workdir/checkpoints/{latest,best_loss,best_f1}`:

- `latest` keeps the last epoch's train state plus the host-side loop state (a JSON dict: epoch,
  plateau state, early-stopping counters, best values, metrics history) so `--resume` continues.
- `best_loss` (`best_mode="min"` on `val_loss`) and `best_f1` (`"max"` on `val_f1`) keep one state
  each (seed 002 keeps the two separately).

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; leftover temporary directories are never listed as
steps and are deleted when the managers open (`cleanup_tmp_directories=True`). Saves are synchronous:
the train step donates the state's buffers, so a background save must not be reading them.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpoints"]

_KINDS = {"best_loss": ("val_loss", "min"), "best_f1": ("val_f1", "max")}


def _options(max_to_keep: int, metric: str | None = None, mode: str = "min"):
    kw: dict[str, Any] = {}
    if metric is not None:
        kw = dict(best_fn=lambda m: m[metric], best_mode=mode)
    return ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=False,
        **kw,
    )


class Checkpoints:
    """The run's three checkpoint managers.

    Steps are epoch counts (step `e` = state after `e` completed epochs).

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> ckpt = Checkpoints(tempfile.mkdtemp())
      >>> ckpt.save_latest(1, {"w": jnp.ones(2)}, {"epoch": 1})
      >>> state, loop = ckpt.restore_latest({"w": jnp.zeros(2)})
      >>> state["w"].tolist(), loop, ckpt.latest_step()
      ([1.0, 1.0], {'epoch': 1}, 1)
      >>> ckpt.close()
    """

    def __init__(self, directory: str | os.PathLike[str]):
        directory = os.path.abspath(os.fspath(directory))
        self.directory = directory
        self.latest = ocp.CheckpointManager(
            os.path.join(directory, "latest"), options=_options(1), item_names=("state", "loop")
        )
        self.best = {
            kind: ocp.CheckpointManager(
                os.path.join(directory, kind), options=_options(1, metric, mode)
            )
            for kind, (metric, mode) in _KINDS.items()
        }

    def latest_step(self) -> int | None:
        """The last completed epoch saved, or None."""
        return self.latest.latest_step()

    def save_latest(self, step: int, state: Any, loop: dict[str, Any]) -> None:
        """Saves the train state and the JSON-serialisable loop state as step `step`."""
        self.latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)
            ),
            force=True,
        )
        self.latest.wait_until_finished()

    def save_best(self, kind: str, step: int, state: Any, metrics: dict[str, float]) -> None:
        """Saves `state` to the `kind` ("best_loss" or "best_f1") manager with its metrics."""
        if kind not in self.best:
            raise ValueError(f"kind must be one of {sorted(self.best)}, got {kind=}")
        metric = _KINDS[kind][0]
        manager = self.best[kind]
        if step in manager.all_steps():  # a resumed run repeating an epoch that was cut short
            manager.delete(step)
        manager.save(
            step,
            args=ocp.args.StandardSave(state),
            metrics={metric: float(metrics[metric])},
            force=True,
        )
        manager.wait_until_finished()

    def restore_latest(self, target: Any) -> tuple[Any, dict[str, Any]]:
        """Restores the latest state (shaped like `target`, concrete or abstract) and loop dict."""
        step = self.latest.latest_step()
        if step is None:
            raise ValueError(f"no checkpoint to resume from in {self.latest.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        out = self.latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore()
            ),
        )
        return out["state"], out["loop"]

    def best_step(self, kind: str) -> int | None:
        """Epoch of the best checkpoint of `kind`, or None."""
        return self.best[kind].best_step()

    def restore_best(self, kind: str, target: Any) -> Any:
        """Restores the best state of `kind` ("best_loss" or "best_f1")."""
        step = self.best_step(kind)
        if step is None:
            raise ValueError(f"no {kind} checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        return self.best[kind].restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        """Waits for pending writes and closes the managers."""
        for manager in (self.latest, *self.best.values()):
            manager.wait_until_finished()
            manager.close()
