"""Data-parallel training throughput: the trainer's step on 1, 2 and 4 devices (forced CPU devices).

Usage (from the repository root)::

    python benchmarks/bench_devices.py [--quick] [--out benchmarks/results/devices.json]

Each device count runs in its own child process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (the device count is fixed when JAX starts).
Every child times the trainer's train step as ``jaxloss-train`` runs it: the step jitted by
``train.step.compiled_steps`` for a ``train.parallel`` mesh over all N devices, a host (numpy)
batch put on the mesh with ``Devices.put_batch`` each step, the state donated, one host sync per
round. The 1-device child also times *today's* step, the same function under a plain
``jax.jit(train_step, donate_argnums=0)`` with the numpy batch passed directly (the trainer before
it had a mesh), interleaved round by round with the mesh step.

Model: ``small_cnn`` (seed 004's CNN: two convolutions with BatchNorm, dropout, three dense layers)
at width 16 on 32x32x1 images, batch 64, SGD, cross-entropy: big enough that the step is not
dispatch-bound, small enough that a CPU run takes about a minute.

What to read: on a 2-core CPU the forced devices share the same two cores, so images/s cannot grow
with N. The figures that mean something are ``mesh/plain`` at 1 device, the overhead of the mesh
path over today's trainer (goal: at most 1.10 in seconds per image), and how much throughput the
partitioning costs at 2 and 4 devices on the same cores. On real accelerators each device adds its
own compute.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

MODEL, WIDTH, IMAGE, NUM_CLASSES = "small_cnn", 16, (32, 32, 1), 10
COUNTS = (1, 2, 4)


def _child(batch_size: int, width: int, steps: int, rounds: int) -> dict:
    """Runs in a child process with N forced devices: images/s of the mesh (and plain) step."""
    import jax
    import numpy as np

    from train import losses, parallel, runtime
    from train import step as step_lib
    from train.config import Config

    runtime.tune_malloc()  # as jaxloss-train does
    config = Config(model=MODEL, width=width, optimizer="sgd", lr=0.01, batch_size=batch_size)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.standard_normal((batch_size, *IMAGE), dtype=np.float32),
        "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
        "mask": np.ones(batch_size, bool),
    }
    loss_fn = losses.loss_from_config(config, NUM_CLASSES)
    key = jax.random.key(1)
    devices = parallel.create_devices()

    def fresh():
        return step_lib.create_train_state(
            config, num_classes=NUM_CLASSES, image_shape=IMAGE, key=jax.random.key(0, impl="rbg")
        )

    def mesh_method():
        train_fn, _ = step_lib.compiled_steps(loss_fn, NUM_CLASSES, 0.0, devices)
        state = [devices.replicate(fresh())]

        def run():
            for _ in range(steps):
                state[0], m = train_fn(state[0], devices.put_batch(batch), key)
            jax.block_until_ready((state[0], m))

        return run

    def plain_method():
        train_fn = jax.jit(
            functools.partial(
                step_lib.train_step, loss_fn=loss_fn, num_classes=NUM_CLASSES, disturb_label=0.0
            ),
            donate_argnums=0,
        )
        state = [fresh()]

        def run():
            for _ in range(steps):
                state[0], m = train_fn(state[0], batch, key)
            jax.block_until_ready((state[0], m))

        return run

    methods = {"mesh": mesh_method()}
    if devices.num_devices == 1:
        methods["plain"] = plain_method()
    compile_s = {}
    for name, run in methods.items():
        t0 = time.perf_counter()
        run()  # compile and warm up
        compile_s[name] = round(time.perf_counter() - t0, 2)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, run in methods.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    images = steps * batch_size
    return {
        "devices": devices.num_devices,
        "mesh": devices.describe(batch_size),
        "first_call_s": compile_s,
        "methods": {
            name: {
                "best_images_per_s": round(images / min(t), 1),
                "median_images_per_s": round(images / statistics.median(t), 1),
                "rounds": len(t),
            }
            for name, t in times.items()
        },
    }


def run(*, quick: bool = False, log=print) -> dict:
    """Starts one child per device count; returns the JSON-ready result."""
    batch, width = (16, 4) if quick else (64, WIDTH)
    steps, rounds = (2, 2) if quick else (10, 7)
    started = time.perf_counter()
    rows = []
    for n in COUNTS:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        env["JAX_PLATFORMS"] = "cpu"
        args = [sys.executable, __file__, "--child", json.dumps([batch, width, steps, rounds])]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            raise RuntimeError(f"the {n}-device child failed: {proc.stderr[-2000:]}")
        row = json.loads(lines[-1])
        log(f"  {n} device(s): {row['methods']}")
        rows.append(row)
    import jax

    one = rows[0]["methods"]
    overhead = one["plain"]["best_images_per_s"] / one["mesh"]["best_images_per_s"]
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cores_available": len(os.sched_getaffinity(0)),
            "jax": jax.__version__,
            "cpu": _cpu(),
        },
        "settings": {
            "model": MODEL,
            "width": width,
            "image": IMAGE,
            "batch_size": batch,
            "steps_per_round": steps,
            "rounds": rounds,
            "quick": quick,
        },
        "results": rows,
        "goals": {
            "mesh_over_plain_seconds_per_image_at_1_device": round(overhead, 3),
            "met": overhead <= 1.10,
        },
        "total_s": round(time.perf_counter() - started, 1),
    }


def _cpu() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def format_markdown(result: dict) -> str:
    """The README's table: images/s per device count, and the 1-device overhead."""
    s = result["settings"]
    lines = [
        f"{s['model']} width {s['width']}, batch {s['batch_size']} of {s['image']}, "
        f"{result['machine']['cpu']} ({result['machine']['cores_available']} cores), "
        f"{result['date_utc']}",
        "",
        "| devices | trainer step (mesh), images/s best / median | today's step (plain jit) |",
        "|---:|---:|---:|",
    ]
    for row in result["results"]:
        m = row["methods"]
        plain = m.get("plain")
        plain_text = (
            f"{plain['best_images_per_s']:.0f} / {plain['median_images_per_s']:.0f}"
            if plain
            else ""
        )
        lines.append(
            f"| {row['devices']} | {m['mesh']['best_images_per_s']:.0f} / "
            f"{m['mesh']['median_images_per_s']:.0f} | {plain_text} |"
        )
    g = result["goals"]
    verdict = "met" if g["met"] else "missed"
    lines += [
        "",
        f"At 1 device the mesh step takes {g['mesh_over_plain_seconds_per_image_at_1_device']:.3f}"
        f"x the seconds per image of today's step (goal <= 1.10: {verdict}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 4, batch 16, 2 rounds")
    parser.add_argument("--out", default=None, help="JSON path (a .md table is written beside it)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(*json.loads(args.child))))
        return None
    result = run(quick=args.quick)
    markdown = format_markdown(result)
    print()
    print(markdown)
    print(f"total {result['total_s']} s")
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        path.with_suffix(".md").write_text(markdown)
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
