"""Orbax checkpoints: the latest epochs (to resume), the best by validation loss and by macro-F1.

Three `orbax.checkpoint.CheckpointManager`s in `workdir/checkpoints/{latest,best_loss,best_f1}`:

- `latest` keeps the last two epochs' train state plus the host-side loop state (a JSON dict:
  epoch, schedule state, early-stopping counters, best values, metrics history) so `--resume`
  continues, and can fall back one epoch when the newest is damaged.
- `best_loss` (`best_mode="min"` on `val_loss`) and `best_f1` (`"max"` on `val_f1`) keep one state
  each (seed 002 keeps the two separately).

Integrity. Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint intact; leftover temporary directories are
never listed as steps and are deleted when the managers open. Orbax verifies no checksum, though:
flipped bytes in a data file restore as plausible weights. So every save also writes a JSON item
`meta` holding a SHA-256 digest of the saved arrays (dtype, shape and bytes of every leaf) and of
the loop state, and every restore recomputes both: a mismatch, or any error orbax raises while
reading (truncated or missing files), is a `CheckpointError` naming the step. `restore_latest`
then falls back to the previous epoch and says so (the damaged step is moved to
`checkpoints/damaged/`, kept for inspection); with no intact step left it raises. An intact
checkpoint of another structure than the state to restore (one written before BatchNorm kept
torch's `num_batches_tracked`) is a `CheckpointMismatchError` instead: nothing is moved and
nothing falls back, since every step of the run has that structure. Saves are
synchronous: the train step donates the state's buffers, so a background save must not read them.

Several processes (`train.parallel`): every process creates the managers and calls every save and
restore (orbax writes each array once and the JSON item from process 0); a damaged step is moved by
process 0 while the others wait, then every process reloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

__all__ = ["CheckpointError", "CheckpointMismatchError", "Checkpoints", "digest"]

_KINDS = {"best_loss": ("val_loss", "min"), "best_f1": ("val_f1", "max")}
_LATEST_KEPT = 2  # the newest and one to fall back to


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or fails its digest (one line, naming the step)."""


class CheckpointMismatchError(CheckpointError):
    """An intact checkpoint whose tree differs from the state to restore (one line)."""


def _paths(tree: Any) -> set[str]:
    """The leaf paths of a pytree (or of orbax's metadata tree) as `a.b.0.c` strings."""
    out = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        out.add(".".join(names).removesuffix(".value"))
    return out


def _mismatch(manager, step: int, target: Any) -> str | None:
    """Why `step`'s saved tree does not fit `target`, or None (same leaves, or no metadata)."""
    try:
        metadata = manager.item_metadata(step)["state"]
        saved = _paths(getattr(metadata, "tree", metadata))
    except Exception:  # unreadable metadata: the restore's own error says more
        return None
    if not saved:  # no metadata (a deleted _METADATA): damage, not another structure
        return None
    wanted = _paths(target)
    missing, unexpected = sorted(wanted - saved), sorted(saved - wanted)
    if not missing and not unexpected:
        return None
    if not unexpected and all(p.endswith("num_batches_tracked") for p in missing):
        return (
            "it was written before BatchNorm kept torch's num_batches_tracked "
            f"({len(missing)} counters missing, e.g. {missing[0]}) and cannot be resumed by this "
            "version: start a new --workdir"
        )
    parts = [
        f"{len(v)} {k}, e.g. {v[0]}"
        for k, v in (("missing", missing), ("unexpected", unexpected))
        if v
    ]
    return f"its tree differs from this model's state ({'; '.join(parts)}): start a new --workdir"


def digest(tree: Any) -> str:
    """SHA-256 of a pytree's leaves (dtype, shape and bytes, in `jax.tree.leaves` order).

    Examples:
      >>> import jax.numpy as jnp
      >>> digest({"w": jnp.ones(2)}) == digest({"w": jnp.ones(2)})
      True
      >>> digest({"w": jnp.ones(2)}) == digest({"w": jnp.ones(2).at[1].set(1.0000001)})
      False
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


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
    """The run's three checkpoint managers; steps are epoch counts (state after `e` epochs).

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> ckpt = Checkpoints(tempfile.mkdtemp())
      >>> ckpt.save_latest(1, {"w": jnp.ones(2)}, {"epoch": 1})
      >>> state, loop = ckpt.restore_latest({"w": jnp.zeros(2)})
      >>> state["w"].tolist(), loop, ckpt.latest_step()
      ([1.0, 1.0], {'epoch': 1}, 1)
      >>> ckpt.close()
    """

    def __init__(self, directory: str | os.PathLike[str], log: Callable[[str], None] = print):
        self.directory = os.path.abspath(os.fspath(directory))
        self.log = log
        self.latest = ocp.CheckpointManager(
            os.path.join(self.directory, "latest"),
            options=_options(_LATEST_KEPT),
            item_names=("state", "meta"),
        )
        self.best = {
            kind: ocp.CheckpointManager(
                os.path.join(self.directory, kind),
                options=_options(1, metric, mode),
                item_names=("state", "meta"),
            )
            for kind, (metric, mode) in _KINDS.items()
        }

    def latest_step(self) -> int | None:
        """The last completed epoch saved, or None."""
        return self.latest.latest_step()

    def _save(self, manager, step: int, state: Any, loop: Any, metrics=None) -> None:
        if step in manager.all_steps():  # a resumed run repeating an epoch that was cut short
            manager.delete(step)
        meta = {"loop": loop, "state_sha256": digest(state), "loop_sha256": _json_digest(loop)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        manager.save(step, args=args, metrics=metrics, force=True)
        manager.wait_until_finished()

    def _restore(self, manager, step: int, target: Any) -> tuple[Any, Any]:
        where = f"checkpoint {os.path.join(manager.directory, str(step))}"
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            out = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
            meta = out["meta"]
            ok = (
                isinstance(meta, dict)
                and meta.get("state_sha256") == digest(out["state"])
                and meta.get("loop_sha256") == _json_digest(meta.get("loop"))
            )
        except Exception as e:  # orbax raises many types for truncated or missing files
            why = _mismatch(manager, step, abstract)
            if why is not None:
                raise CheckpointMismatchError(f"{where} does not fit: {why}") from None
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(f"{where} is damaged: {reason}") from None
        if not ok:
            raise CheckpointError(f"{where} is damaged: its contents do not match their digest")
        return out["state"], meta["loop"]

    def save_latest(self, step: int, state: Any, loop: dict[str, Any]) -> None:
        """Saves the train state and the JSON-serialisable loop state as step `step`."""
        self._save(self.latest, step, state, loop)

    def save_best(self, kind: str, step: int, state: Any, metrics: dict[str, float]) -> None:
        """Saves `state` to the `kind` ("best_loss" or "best_f1") manager with its metrics."""
        if kind not in self.best:
            raise ValueError(f"kind must be one of {sorted(self.best)}, got {kind=}")
        metric = _KINDS[kind][0]
        value = {metric: float(metrics[metric])}
        self._save(self.best[kind], step, state, value, metrics=value)

    def restore_latest(self, target: Any) -> tuple[Any, dict[str, Any]]:
        """Restores the newest intact latest state (shaped like `target`) and its loop dict.

        A damaged step is reported through `log`, moved to `checkpoints/damaged/` and the previous
        one is tried.

        Raises:
          CheckpointError: there is no checkpoint, or none is intact.
          CheckpointMismatchError: the newest is intact but has another tree than `target`.
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint to resume from in {self.latest.directory}")
        errors = []
        for step in steps:
            try:
                return self._restore(self.latest, step, target)
            except CheckpointMismatchError:  # intact, of an older structure: never quarantined
                raise
            except CheckpointError as e:
                errors.append(str(e))
                moved = self._quarantine(step)
                older = [s for s in steps if s < step]
                then = f"falling back to epoch {older[0]}" if older else "no older checkpoint left"
                self.log(f"warning: {e}; moved to {moved}; {then}")
        raise CheckpointError(f"no intact checkpoint to resume from: {errors[0]}")

    def _quarantine(self, step: int) -> str:
        dest = os.path.join(self.directory, "damaged", f"latest-{step}")
        if jax.process_index() == 0:
            shutil.rmtree(dest, ignore_errors=True)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.move(os.path.join(self.latest.directory, str(step)), dest)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"jaxloss: quarantined latest-{step}")
        self.latest.reload()
        return dest

    def discard_after(self, step: int) -> None:
        """Deletes every best checkpoint saved after epoch `step` (they are being re-run)."""
        for manager in self.best.values():
            for s in manager.all_steps():
                if s > step:
                    manager.delete(s)
            manager.reload()

    def best_step(self, kind: str) -> int | None:
        """Epoch of the best checkpoint of `kind`, or None."""
        return self.best[kind].best_step()

    def restore_best(self, kind: str, target: Any) -> Any:
        """Restores the best state of `kind` ("best_loss" or "best_f1"), checking its digest.

        Raises:
          CheckpointError: there is none, or it is damaged.
        """
        step = self.best_step(kind)
        if step is None:
            raise CheckpointError(f"no {kind} checkpoint in {self.directory}")
        return self._restore(self.best[kind], step, target)[0]

    def close(self) -> None:
        """Waits for pending writes and closes the managers."""
        for manager in (self.latest, *self.best.values()):
            manager.wait_until_finished()
            manager.close()
