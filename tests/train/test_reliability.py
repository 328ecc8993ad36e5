"""Never silently wrong: damaged checkpoints, resume mistakes, locks, interrupts, failed writes.

Every failure is one `error: ...` line with exit status 1 and loses no earlier checkpoint; a
damaged newest checkpoint falls back to the previous one and says so; metrics.jsonl always
agrees with the latest checkpoint. Tiny runs (LeNet width 2, 3 batches per epoch on the embedded
digits); one finished 2-epoch run is made once per module and copied for each case. A persistent
XLA compilation cache (module-scoped) keeps the many short runs from recompiling.
"""

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from train import checkpoints, cli, step
from train import loop as loop_lib
from train import workdir as run_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "--model",
    "lenet",
    "--width",
    "2",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--limit-train-batches",
    "3",
    "--no-plot",
]
FIRST = ["--seed", "3", "--lr", "0.01"]  # the saved run's settings a resume must keep
DIGITS = dict(num_classes=10, image_shape=(8, 8, 1))


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for this module's runs (in-process and subprocesses)."""
    path = str(tmp_path_factory.mktemp("xla_cache"))
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {n: getattr(jax.config, n) for n in names}
    for name, value in zip(names, (path, 0, 0), strict=True):
        jax.config.update(name, value)
    _reset_cache()
    yield {
        "JAX_COMPILATION_CACHE_DIR": path,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    for name, value in before.items():
        jax.config.update(name, value)
    _reset_cache()


def _reset_cache():
    with contextlib.suppress(Exception):
        from jax._src import compilation_cache

        compilation_cache.reset_cache()


def _cli(argv):
    """`cli.main(argv)` in-process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def _assert_one_error(status, err, *contains):
    assert status == 1, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for text in contains:
        assert text in err, err


def _snapshot(workdir):
    """relative path -> SHA-256 of every file (the lock file, which names its holder, aside)."""
    files = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            if name == ".lock":
                continue
            with open(path, "rb") as f:
                files[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
    return files


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _latest_steps(workdir):
    latest = os.path.join(workdir, "checkpoints", "latest")
    return sorted(int(n) for n in os.listdir(latest) if n.isdigit())


def _target(workdir):
    config = run_dir.read_config(workdir)
    key = jax.random.key(config.seed, impl="rbg")
    return jax.eval_shape(lambda: step.create_train_state(config, key=key, **DIGITS))


def _restore_latest(workdir):
    """(state, loop dict, log lines) of the newest intact latest checkpoint."""
    lines = []
    ckpt = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), log=lines.append)
    try:
        state, loop = ckpt.restore_latest(_target(workdir))
    finally:
        ckpt.close()
    return state, loop, lines


def _state_file(workdir, step_, kind="latest"):
    """The largest data file of a checkpoint's `state` item."""
    root = os.path.join(workdir, "checkpoints", kind, str(step_), "state")
    paths = [os.path.join(r, n) for r, _, ns in os.walk(root) for n in ns]
    return max(paths, key=os.path.getsize)


def _xor(path, n=64):
    data = bytearray(open(path, "rb").read())
    start = max(0, len(data) // 2 - n // 2)
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _damage(workdir, step_, how, kind="latest"):
    step_dir = os.path.join(workdir, "checkpoints", kind, str(step_))
    if how == "xor":
        _xor(_state_file(workdir, step_, kind))
    elif how == "truncated":
        path = _state_file(workdir, step_, kind)
        os.truncate(path, os.path.getsize(path) // 2)
    elif how == "zeroed":
        path = _state_file(workdir, step_, kind)
        open(path, "wb").write(bytes(os.path.getsize(path)))
    elif how == "no_METADATA":
        os.remove(os.path.join(step_dir, "state", "_METADATA"))
    elif how.startswith("meta_without_"):
        path = os.path.join(step_dir, "meta", "metadata")
        meta = json.load(open(path))
        del meta[how[len("meta_without_") :]]
        json.dump(meta, open(path, "w"))
    else:
        raise AssertionError(how)


DAMAGE = [
    "xor",
    "truncated",
    "zeroed",
    "no_METADATA",
    "meta_without_state_sha256",
    "meta_without_loop",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, compile_cache):
    """A finished 2-epoch run (seed 3, lr 0.01): latest holds epochs 1 and 2."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    status, out, err = _cli([*TINY, *FIRST, "--workdir", workdir])
    assert status == 0, err
    assert _latest_steps(workdir) == [1, 2]
    return workdir


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run."""
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    return str(workdir)


# ----------------------------------------------------------------------------- (5) verify


@pytest.mark.parametrize("atol", [None, "1e-4"])
def test_verify_refuses_a_checkpoint_with_a_nan_weight(tmp_path, atol):
    torch = pytest.importorskip("torch")
    from train.pytorch import models as torch_models
    from train.pytorch import verify

    torch.manual_seed(0)
    model = torch_models.build("resnet18", num_classes=5, width=2)
    state = model.state_dict()
    state["layer1.0.conv1.weight"].view(-1)[3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    args = [str(path), "--model", "resnet18", "--batch-size", "1", "--image-size", "32"]
    args += ["--atol", atol] if atol else []
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = verify.main(args)
    _assert_one_error(status, err.getvalue(), "non-finite")


# ---------------------------------------------------------------- (6) damaged checkpoints


def test_damaged_newest_checkpoint_falls_back_and_the_run_completes(run):
    _xor(_state_file(run, 2))
    status, out, err = _cli(["--workdir", run, "--resume", "--epochs", "3"])
    assert status == 0, err
    assert "Traceback" not in err
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, out
    assert os.path.join("latest", "2") in warnings[0] and "falling back to epoch 1" in warnings[0]
    assert os.path.isdir(os.path.join(run, "checkpoints", "damaged", "latest-2"))
    assert [r["epoch"] for r in _records(run)] == [1, 2, 3]
    assert "resumed from" in out and "after epoch 1" in out
    state, loop, lines = _restore_latest(run)
    assert loop["epoch"] == 3 and not lines
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize("how", DAMAGE)
def test_each_kind_of_damage_is_detected_and_the_previous_epoch_used(run, how):
    _damage(run, 2, how)
    _, loop, lines = _restore_latest(run)
    assert loop["epoch"] == 1
    assert len(lines) == 1 and lines[0].startswith("warning: "), lines
    assert "damaged" in lines[0] and "falling back to epoch 1" in lines[0]
    assert _latest_steps(run) == [1]
    assert os.path.isdir(os.path.join(run, "checkpoints", "damaged", "latest-2"))


@pytest.mark.parametrize("how", DAMAGE)
def test_every_latest_checkpoint_damaged_is_one_error_line(run, how):
    metrics = open(os.path.join(run, "metrics.jsonl")).read()
    for s in (1, 2):
        _damage(run, s, how)
    status, out, err = _cli(["--workdir", run, "--resume", "--epochs", "3"])
    _assert_one_error(status, err, "no intact checkpoint")
    assert open(os.path.join(run, "metrics.jsonl")).read() == metrics
    for s in (1, 2):  # kept for inspection, not deleted
        assert os.path.isdir(os.path.join(run, "checkpoints", "damaged", f"latest-{s}"))
    assert "epoch 3/3" not in out


@pytest.mark.parametrize("how", ["xor", "truncated", "meta_without_state_sha256"])
def test_damaged_best_checkpoint_raises_checkpoint_error(run, how):
    ckpt = checkpoints.Checkpoints(os.path.join(run, "checkpoints"))
    try:
        best = ckpt.best_step("best_loss")
        ckpt.restore_best("best_loss", _target(run))  # intact: restores
        _damage(run, best, how, kind="best_loss")
        with pytest.raises(checkpoints.CheckpointError, match=f"best_loss.{best} is damaged"):
            ckpt.restore_best("best_loss", _target(run))
    finally:
        ckpt.close()


# ----------------------------------------------------------------------------- (9) resume mistakes


def test_resume_on_an_empty_dir_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    status, out, err = _cli([*TINY, "--workdir", empty, "--resume"])
    _assert_one_error(status, err, "config.json")
    assert os.listdir(empty) == []


def test_resume_on_a_mistyped_workdir_creates_nothing(tmp_path):
    missing = tmp_path / "no-such-run"
    status, out, err = _cli(["--workdir", missing, "--resume"])
    _assert_one_error(status, err, str(missing))
    assert not missing.exists()


def test_resume_without_config_json_writes_nothing(run):
    os.remove(os.path.join(run, "config.json"))
    before = _snapshot(run)
    status, out, err = _cli(["--workdir", run, "--resume"])
    _assert_one_error(status, err, os.path.join(run, "config.json"))
    assert _snapshot(run) == before


@pytest.mark.parametrize("text", ["[]", "null", "\x00\xff garbage {", ""])
def test_resume_with_a_bad_config_json_names_the_file(run, text):
    with open(os.path.join(run, "config.json"), "w", encoding="latin-1") as f:
        f.write(text)
    before = _snapshot(run)
    status, out, err = _cli(["--workdir", run, "--resume"])
    _assert_one_error(status, err, os.path.join(run, "config.json"))
    assert _snapshot(run) == before


def test_resume_with_a_changed_learning_rate_names_the_flag(run):
    before = _snapshot(run)
    status, out, err = _cli(["--workdir", run, "--resume", "--lr", "0.5"])
    _assert_one_error(status, err, "--lr")
    assert _snapshot(run) == before


def test_resume_without_retyping_flags_continues_the_saved_run(run):
    status, out, err = _cli(["--workdir", run, "--resume", "--epochs", "3"])
    assert status == 0, err
    config = json.load(open(os.path.join(run, "config.json")))
    assert (config["seed"], config["lr"], config["epochs"]) == (3, 0.01, 3)
    assert config["model"] == "lenet" and config["t_max"] == 2
    assert "the cosine schedule keeps T_max=2" in out
    records = _records(run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[0]["lr"] == 0.01  # the history of the saved run, not a fresh one


# ----------------------------------------------------------------------------- (10) commit point


def test_kill_between_checkpoint_and_metrics_is_repaired_by_resume(run):
    full = open(os.path.join(run, "metrics.jsonl")).read()
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.write(full.splitlines(keepends=True)[0])  # as if killed before the last write
    status, out, err = _cli(["--workdir", run, "--resume"])
    assert status == 0, err
    assert "epoch 3" not in out and "epoch 2/2" not in out  # nothing trained again
    assert open(os.path.join(run, "metrics.jsonl")).read() == full
    assert _latest_steps(run) == [1, 2]


# ----------------------------------------------------------------------------- (11) lock


def test_a_locked_workdir_is_refused_naming_the_holder(run, compile_cache):
    code = textwrap.dedent(
        f"""
        import sys, time
        from train import workdir
        with workdir.lock({run!r}):
            print("held", flush=True)
            time.sleep(120)
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(run)
        status, out, err = _cli(["--workdir", run, "--resume"])
        _assert_one_error(status, err, f"process {holder.pid}")
        assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait(30)
    status, out, err = _cli(["--workdir", run, "--resume"])
    assert status == 0, err


# ----------------------------------------------------------------------------- (12) interrupts


def _start(workdir, compile_cache, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **compile_cache)
    env.pop("JAXLOSS_TRACEBACK", None)
    return subprocess.Popen(
        [sys.executable, "-m", "train", *TINY, *extra, "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _interrupt(proc):
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Segmentation fault" not in err and "Traceback" not in err, err[-2000:]
    return out, err


@pytest.mark.parametrize("attempt", range(3))
def test_interrupt_at_start_up_exits_130(tmp_path, compile_cache, attempt):
    workdir = tmp_path / "run"
    proc = _start(workdir, compile_cache)
    time.sleep(0.3 + 0.6 * attempt)  # while jax imports, while flags parse, while compiling
    out, err = _interrupt(proc)
    assert "interrupted" in err
    if workdir.is_dir() and _latest_steps_or_none(workdir):
        assert f"--workdir {workdir} --resume" in err
    else:
        assert "nothing to resume" in err


def _latest_steps_or_none(workdir):
    try:
        return _latest_steps(workdir)
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("wait_for,sleep", [(1, 0.0), (2, 0.2)])
def test_interrupt_mid_run_resumes_to_a_consistent_end(tmp_path, compile_cache, wait_for, sleep):
    workdir = tmp_path / "run"
    proc = _start(workdir, compile_cache, "--epochs", "5")
    deadline = time.monotonic() + 240
    target = workdir / "checkpoints" / "latest" / str(wait_for)
    while not target.is_dir():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} early: {err[-3000:]}")
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(sleep)
    out, err = _interrupt(proc)
    assert f"interrupted; continue with: jaxloss-train --workdir {workdir} --resume" in err
    done = _latest_steps(workdir)
    assert done and max(done) < 5  # it really was cut short
    assert [r["epoch"] for r in _records(workdir)] in (
        [*range(1, max(done) + 1)],
        [*range(1, max(done))],
    )  # metrics.jsonl lags the commit point by at most the epoch being written
    status, out, err = _cli(["--workdir", workdir, "--resume"])
    assert status == 0, err
    assert [r["epoch"] for r in _records(workdir)] == [1, 2, 3, 4, 5]
    assert _latest_steps(workdir) == [4, 5]


# ----------------------------------------------------------------------------- failed writes


def _raise_on(monkeypatch, module, name, errno_, when):
    original = getattr(module, name)

    def failing(*args, **kwargs):
        if when(*args, **kwargs):
            raise OSError(errno_, os.strerror(errno_))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


def test_full_disk_while_saving_epoch_2_keeps_epoch_1(tmp_path, monkeypatch, finished):
    workdir = tmp_path / "run"
    _raise_on(
        monkeypatch,
        checkpoints.Checkpoints,
        "save_latest",
        errno.ENOSPC,
        lambda self, step_, *a: step_ == 2,
    )
    status, out, err = _cli([*TINY, "--workdir", workdir])
    _assert_one_error(status, err, "No space left on device")
    assert _latest_steps(workdir) == [1]
    assert [r["epoch"] for r in _records(workdir)] == [1]
    monkeypatch.undo()
    _, loop, lines = _restore_latest(str(workdir))
    assert loop["epoch"] == 1 and not lines


def test_full_disk_while_writing_metrics_is_repaired_by_resume(run, monkeypatch):
    full = open(os.path.join(run, "metrics.jsonl")).read()
    _raise_on(
        monkeypatch, run_dir, "write_metrics", errno.ENOSPC, lambda w, history: len(history) == 3
    )
    status, out, err = _cli(["--workdir", run, "--resume", "--epochs", "3"])
    _assert_one_error(status, err, "No space left on device")
    assert open(os.path.join(run, "metrics.jsonl")).read() == full  # the previous version
    assert _latest_steps(run) == [2, 3]  # epoch 3 was committed
    monkeypatch.undo()
    status, out, err = _cli(["--workdir", run, "--resume"])
    assert status == 0, err
    assert [r["epoch"] for r in _records(run)] == [1, 2, 3]
    assert "epoch 3/3" not in out  # committed, not trained again


def test_atomic_write_that_fails_leaves_the_previous_file(run, monkeypatch):
    full = open(os.path.join(run, "metrics.jsonl")).read()
    _raise_on(monkeypatch, run_dir.os, "fsync", errno.ENOSPC, lambda fd: True)
    with pytest.raises(OSError, match="No space"):
        run_dir.write_metrics(run, [{"epoch": 1}])
    monkeypatch.undo()
    assert open(os.path.join(run, "metrics.jsonl")).read() == full
    assert not [n for n in os.listdir(run) if ".tmp" in n]


def test_read_only_workdir_is_one_error_line(run, monkeypatch):
    before = _snapshot(run)
    _raise_on(monkeypatch, run_dir, "write_config", errno.EROFS, lambda *a: True)
    status, out, err = _cli(["--workdir", run, "--resume"])
    _assert_one_error(status, err, "Read-only file system")
    monkeypatch.undo()
    assert _snapshot(run) == before
    _, loop, lines = _restore_latest(run)
    assert loop["epoch"] == 2 and not lines


# ----------------------------------------------------------------------------- not a workdir


def test_workdir_that_is_a_file_is_one_error_line(tmp_path):
    path = tmp_path / "file"
    path.write_text("mine")
    status, out, err = _cli([*TINY, "--workdir", path])
    _assert_one_error(status, err, str(path))
    assert path.read_text() == "mine"


def test_checkpoints_that_is_a_file_is_one_error_line(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("mine")
    status, out, err = _cli([*TINY, "--workdir", workdir])
    _assert_one_error(status, err)
    assert (workdir / "checkpoints").read_text() == "mine"
    assert not (workdir / "metrics.jsonl").exists() or not _records(workdir)


def test_loop_state_round_trips_through_the_checkpoint(run):
    _, loop, _ = _restore_latest(run)
    state = loop_lib.LoopState.from_dict(loop)
    assert state.epoch == 2 and [r["epoch"] for r in state.history] == [1, 2]
    assert math.isfinite(state.best_val_loss)
