"""Devices and processes: the run's mesh, how a batch is split over it, and which process writes.

The trainer is data-parallel with JAX's own machinery, not a hand-written one. A
`jax.sharding.Mesh` has one axis, `"data"`, over the devices the run uses. The train state is
replicated (`NamedSharding(mesh, P())`). Every batch is split along its first axis
(`NamedSharding(mesh, P("data"))`). `train.step.compiled_steps` jits the step with those
shardings. The step is written for the global batch, and XLA's SPMD partitioner inserts the
all-reduces. So the semantics do not depend on the device count: the loss is a mean over the
global batch (with `weight`, over the global weight sum), `f1_loss` sums its counts over it,
BatchNorm takes global statistics (torch's `SyncBatchNorm`; `batch_norm="local"` is per device),
and random numbers (dropout, DisturbLabel) are the same on 1 and on 4 devices, since
`jax.random` is independent of sharding.

Several processes (several hosts, or several GPUs each driven by its own process) start with
`initialize` (`jax.distributed.initialize`). The mesh then spans every process's devices. Each
process loads only its rows of each global batch (`Devices.rows`) and contributes them with
`jax.make_array_from_process_local_data`. The epoch's metrics are replicated, so every process
reads the same numbers and takes the same decisions. Process 0 alone writes files other than
checkpoints (`Devices.is_primary`); orbax writes checkpoints from every process.

Examples:
  >>> devices = create_devices()
  >>> devices.num_devices, devices.num_processes, devices.rows(8)
  (1, 1, slice(0, None, None))
  >>> batch = devices.put_batch({"label": np.arange(8)})
  >>> batch["label"].sharding.spec
  P('data',)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "Devices", "check_divisible", "create_devices", "initialize"]

DATA_AXIS = "data"


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """Starts `jax.distributed` when the flags or the environment ask for several processes.

    Args:
      coordinator: `HOST:PORT` of process 0's coordination service, `"auto"` to let JAX detect
        a cluster (SLURM, Open MPI, Kubernetes, cloud TPU), or None: the `JAX_COORDINATOR_ADDRESS`
        environment variable if set, else a single process.
      num_processes: how many processes take part (None: from the environment).
      process_id: this process's index in `[0, num_processes)` (None: from the environment).

    Returns:
      Whether `jax.distributed.initialize` was called.

    Raises:
      ValueError: flags that cannot describe a run (one line, naming them).

    Examples:
      >>> initialize(None, None, None)  # one process: nothing to start
      False
      >>> initialize(None, 2, 0)
      Traceback (most recent call last):
      ...
      ValueError: --num-processes/--process-id need --coordinator HOST:PORT (or ...)
    """
    env = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if coordinator is None and env is None:
        if num_processes is not None or process_id is not None:
            raise ValueError(
                "--num-processes/--process-id need --coordinator HOST:PORT "
                "(or JAX_COORDINATOR_ADDRESS in the environment)"
            )
        return False
    if coordinator is not None and coordinator != "auto":
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--coordinator must be HOST:PORT or 'auto', got {coordinator!r}")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is not None:
        if process_id < 0 or (num_processes is not None and process_id >= num_processes):
            raise ValueError(
                f"--process-id must be in [0, --num-processes={num_processes}), got {process_id}"
            )
    address = None if coordinator in (None, "auto") else coordinator
    jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)
    return True


def check_divisible(name: str, batch_size: int, num_devices: int) -> None:
    """Raises `ValueError` unless `num_devices` divides `batch_size`, naming both numbers.

    Examples:
      >>> check_divisible("batch_size", 64, 4)
      >>> check_divisible("batch_size", 10, 4)
      Traceback (most recent call last):
      ...
      ValueError: batch_size=10 is not divisible by the 4 devices: use a multiple of 4 (e.g. 12) ...
    """
    if batch_size % num_devices:
        nearest = -(-batch_size // num_devices) * num_devices
        raise ValueError(
            f"{name}={batch_size} is not divisible by the {num_devices} devices: use a multiple "
            f"of {num_devices} (e.g. {nearest}) or --devices"
        )


@dataclasses.dataclass(frozen=True)
class Devices:
    """The run's mesh (one `"data"` axis) and this process's place in it.

    Attributes:
      mesh: the `jax.sharding.Mesh` over the devices the run uses, ordered by process and id
        (process 0's devices first).
    """

    mesh: Mesh

    @property
    def num_devices(self) -> int:
        """Devices in the mesh, over all processes."""
        return self.mesh.size

    @property
    def num_processes(self) -> int:
        """Processes taking part (`jax.process_count()`)."""
        return jax.process_count()

    @property
    def process_index(self) -> int:
        """This process's index (`jax.process_index()`)."""
        return jax.process_index()

    @property
    def is_primary(self) -> bool:
        """Whether this process writes the run's files (config, metrics, plots, exports)."""
        return jax.process_index() == 0

    @property
    def replicated(self) -> NamedSharding:
        """Sharding of the train state and the metrics: a full copy on every device."""
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch_sharding(self) -> NamedSharding:
        """Sharding of a batch: split along its first axis over the mesh."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    def describe(self, global_batch: int) -> str:
        """One line: devices, processes, global and per-device batch.

        Examples:
          >>> create_devices().describe(64)
          'mesh data=1 (1 device, cpu, 1 process): global batch 64, 64 per device'
        """
        n, p = self.num_devices, self.num_processes
        platform = self.mesh.devices.flat[0].platform
        return (
            f"mesh {DATA_AXIS}={n} ({n} device{'s' * (n > 1)}, {platform}, "
            f"{p} process{'es' * (p > 1)}): global batch {global_batch}, "
            f"{global_batch // n} per device"
        )

    def rows(self, global_batch: int) -> slice:
        """The rows of a global batch of `global_batch` examples that this process loads.

        They are the rows its devices hold under `batch_sharding`: contiguous, since the mesh
        orders devices by process. One process gets `slice(0, None)`, every row.
        """
        if self.num_processes == 1:
            return slice(0, None)
        index_map = self.batch_sharding.addressable_devices_indices_map((global_batch,))
        spans = sorted(_span(index[0], global_batch) for index in index_map.values())
        if any(a[1] != b[0] for a, b in zip(spans, spans[1:], strict=False)):
            raise ValueError(f"this process's devices hold rows {spans} of the batch: not one run")
        return slice(spans[0][0], spans[-1][1])

    def put_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a batch (`rows`) as global arrays split over the mesh."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in local.items()
        }

    def replicate(self, tree: Any) -> Any:
        """A copy of `tree` on every device of the mesh (every process passes the same values)."""
        return jax.tree.map(
            lambda x: jax.device_put(np.asarray(jax.device_get(x)), self.replicated), tree
        )

    def fetch(self, tree: Any) -> Any:
        """Replicated arrays as numpy arrays, on every process."""
        return jax.tree.map(np.asarray, tree)

    def check_same(self, what: str, text: str) -> None:
        """Raises `ValueError` unless every process passes the same `text` (a no-op for one).

        Processes started with different flags would compile different programs, and their
        collectives would hang or mix unrelated numbers: a run refuses to start instead.
        """
        if self.num_processes == 1:
            return
        digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
        every = np.asarray(multihost_utils.process_allgather(digest))
        differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
        if differ:
            raise ValueError(
                f"process {differ[0]}'s {what} differs from process 0's: start every process "
                "with the same flags (but --process-id)"
            )

    def all_ok(self, ok: bool) -> bool:
        """Whether `ok` holds on every process (each passes its own)."""
        if self.num_processes == 1:
            return ok
        return bool(np.all(multihost_utils.process_allgather(np.array([ok]))))

    def barrier(self, name: str) -> None:
        """Waits until every process reaches the barrier `name` (a no-op for one process)."""
        if self.num_processes > 1:
            multihost_utils.sync_global_devices(name)


def _span(index: slice, size: int) -> tuple[int, int]:
    return (index.start or 0, size if index.stop is None else index.stop)


def create_devices(num_devices: int | None = None) -> Devices:
    """The mesh over the first `num_devices` devices (None: all of them, over all processes).

    Raises:
      ValueError: `num_devices` is not in `[1, jax.device_count()]`, or selects only some devices
        of a multi-process run (every process must take part).

    Examples:
      >>> create_devices(1).num_devices
      1
      >>> create_devices(jax.device_count() + 1)
      Traceback (most recent call last):
      ...
      ValueError: --devices=2 but this run sees 1 device (cpu)
    """
    available = jax.devices()
    if num_devices is None:
        num_devices = len(available)
    if not 1 <= num_devices <= len(available):
        platform = available[0].platform
        raise ValueError(
            f"--devices={num_devices} but this run sees {len(available)} device"
            f"{'s' * (len(available) > 1)} ({platform})"
        )
    if jax.process_count() > 1 and num_devices != len(available):
        raise ValueError(
            f"--devices={num_devices}: a run of {jax.process_count()} processes uses all "
            f"{len(available)} devices"
        )
    # by process, so that each process's devices hold one run of rows (Devices.rows)
    ordered = sorted(available, key=lambda d: (d.process_index, d.id))[:num_devices]
    axis_types = (jax.sharding.AxisType.Auto,)
    mesh = Mesh(np.array(ordered), (DATA_AXIS,), axis_types=axis_types)
    return Devices(mesh)
