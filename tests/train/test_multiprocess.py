"""Two processes on loopback, each with 2 forced CPU devices, started as a user starts them (the
README's commands): they finish, agree with one process on one device, and a kill of both
followed by `--resume` ends exactly as the uninterrupted run.

SGD, not Adam: the two runs sum the gradient in another order (gloo's all-reduce across the
processes), and Adam's early steps, about lr * sign(g), turn that rounding into lr-sized
parameter differences (measured: 1.3e-3 relative in the validation loss after 2 epochs of the
default LeNet). With SGD they agree to 4e-7 (README, "More devices, more hosts")."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TIMEOUT = 300


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    return env


def _flags(cache: str, epochs: int) -> list[str]:
    return [
        "--model", "lenet", "--width", "6", "--epochs", str(epochs), "--batch-size", "64",
        "--eval-batch-size", "40", "--disturb-label", "10", "--optimizer", "sgd", "--lr", "0.05",
        "--no-plot", "--cache-dir", cache,
    ]  # fmt: skip


def _start(workdir: str, flags: list[str], *other: list[str]) -> list[subprocess.Popen]:
    """Processes 0 and 1 of a run with `flags` (process 1 with `other[0]` if given)."""
    coordinator = ["--coordinator", f"127.0.0.1:{_port()}", "--num-processes", "2"]
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "train",
                *f,
                "--workdir",
                workdir,
                *coordinator,
                "--process-id",
                str(i),
            ],
            cwd=REPO,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i, f in enumerate([flags, *other] if other else [flags, flags])
    ]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    try:
        outs = [p.communicate(timeout=_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _ours(stdout: str) -> str:
    return "".join(line for line in stdout.splitlines(True) if not line.startswith("[Gloo]"))


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        r.pop("time_s")
    return records


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("digits"))
    subprocess.run(  # prepare the dataset once, so that two processes do not race to write it
        [sys.executable, "-c", f"from train.data.digits import prepare_digits; "
         f"prepare_digits({path!r})"],
        cwd=REPO, check=True, capture_output=True, timeout=_TIMEOUT,
    )  # fmt: skip
    return path


def test_two_processes_agree_with_one_and_resume_after_both_are_killed(tmp_path, cache):
    epochs = 4
    flags = _flags(cache, epochs)
    two = str(tmp_path / "two")
    results = _finish(_start(two, flags))
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    # process 0 alone speaks and writes (gloo, XLA:CPU's collectives, prints its connections)
    out0, out1 = (_ours(r[1]) for r in results)
    assert "results written to" in out0 and out1 == ""
    assert "mesh data=4 (4 devices, cpu, 2 processes): global batch 64, 16 per device" in (
        results[0][2] + out0
    )

    one = str(tmp_path / "one")
    single = subprocess.run(
        [sys.executable, "-m", "train", *flags, "--workdir", one],
        cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=_TIMEOUT,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    m_two, m_one = _metrics(two), _metrics(one)
    assert len(m_two) == len(m_one) == epochs
    for a, b in zip(m_two, m_one, strict=True):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
        for key in ("train_accuracy", "val_accuracy", "val_f1"):
            assert abs(a[key] - b[key]) <= 0.01, key
        assert a["val_count"] == b["val_count"] == 359

    killed = str(tmp_path / "killed")
    procs = _start(killed, flags)
    path = os.path.join(killed, "metrics.jsonl")
    deadline = time.monotonic() + _TIMEOUT
    try:
        while time.monotonic() < deadline:
            if os.path.exists(path) and os.path.getsize(path) > 0:
                break
            assert all(p.poll() is None for p in procs), "a process ended before epoch 1"
            time.sleep(0.02)
        for p in procs:
            p.send_signal(signal.SIGKILL)
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    done = len(_metrics(killed))
    assert 1 <= done < epochs  # killed mid-run
    results = _finish(_start(killed, [*flags, "--resume"]))
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    assert (
        f"resumed from {os.path.join(killed, 'checkpoints', 'latest')}"
        in results[0][2] + (results[0][1])
    )
    assert _metrics(killed) == m_two  # exactly the uninterrupted run


def test_processes_started_with_different_flags_refuse_to_run(tmp_path, cache):
    """Different flags would compile different programs whose collectives hang or mix numbers:
    each process stops at once with one error line."""
    workdir = str(tmp_path / "w")
    flags = _flags(cache, 1)
    procs = _start(workdir, [*flags, "--batch-size", "64"], [*flags, "--batch-size", "32"])
    for rc, _, err in _finish(procs):
        assert rc == 1
        assert _errors(err) == [
            "error: process 1's configuration differs from process 0's: start every process "
            "with the same flags (but --process-id)"
        ], err[-2000:]
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_a_workdir_in_use_stops_every_process_in_one_line(tmp_path, cache):
    """Process 0 cannot lock the workdir (another run holds it): every process stops at once,
    none waits in a collective for a process 0 that has left."""
    import fcntl

    workdir = tmp_path / "busy"
    workdir.mkdir()
    with open(workdir / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        results = _finish(_start(str(workdir), _flags(cache, 1)))
    errors = [_errors(err) for _, _, err in results]
    assert [rc for rc, _, _ in results] == [1, 1]
    assert errors[0] == [
        f"error: {workdir} is in use by another run (process 4242); wait for it to finish or "
        "choose another --workdir"
    ]
    assert errors[1] == [f"error: {workdir} is in use by another run (process 0 could not lock it)"]
