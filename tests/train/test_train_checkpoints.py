"""train.checkpoints: best-by-loss / best-by-F1 managers, latest with loop state, partial saves."""

import jax.numpy as jnp
import numpy as np
import pytest

from train.checkpoints import CheckpointMismatchError, Checkpoints


def _state(v):
    return {"params": {"w": jnp.full((3,), v, jnp.float32)}, "step": jnp.int32(v)}


def test_best_managers_keep_the_best_of_each_metric(tmp_path):
    ckpt = Checkpoints(tmp_path)
    history = [(1, 1.0, 0.50), (2, 0.7, 0.40), (3, 0.9, 0.80), (4, 0.8, 0.60)]
    best_loss, best_f1 = np.inf, -np.inf
    for step, loss, f1 in history:
        record = {"val_loss": loss, "val_f1": f1}
        if loss < best_loss:
            best_loss = loss
            ckpt.save_best("best_loss", step, _state(step), record)
        if f1 > best_f1:
            best_f1 = f1
            ckpt.save_best("best_f1", step, _state(step), record)
        ckpt.save_latest(step, _state(step), {"epoch": step, "history": [loss, f1]})
    assert ckpt.best_step("best_loss") == 2 and ckpt.best_step("best_f1") == 3
    assert ckpt.latest.all_steps() == [3, 4] and ckpt.best["best_loss"].all_steps() == [2]
    np.testing.assert_array_equal(
        ckpt.restore_best("best_loss", _state(0))["params"]["w"], [2, 2, 2]
    )
    np.testing.assert_array_equal(ckpt.restore_best("best_f1", _state(0))["params"]["w"], [3, 3, 3])
    # a resumed run that repeats epoch 3 saves the same step again
    ckpt.save_best("best_f1", 3, _state(7), {"val_f1": 0.8})
    np.testing.assert_array_equal(ckpt.restore_best("best_f1", _state(0))["params"]["w"], [7, 7, 7])
    state, loop = ckpt.restore_latest(_state(0))
    assert int(state["step"]) == 4 and loop == {"epoch": 4, "history": [0.8, 0.6]}
    ckpt.close()
    with pytest.raises(ValueError, match="kind"):
        Checkpoints(tmp_path).save_best("best_acc", 1, _state(1), {})


def test_partial_save_is_ignored_and_cleaned(tmp_path):
    ckpt = Checkpoints(tmp_path)
    ckpt.save_latest(1, _state(1), {"epoch": 1})
    ckpt.close()
    # what a kill in the middle of saving step 2 leaves behind
    partial = tmp_path / "latest" / "2.orbax-checkpoint-tmp-1712345678901"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "_METADATA").write_text("{trunc")
    ckpt = Checkpoints(tmp_path)
    assert ckpt.latest_step() == 1 and ckpt.latest.all_steps() == [1]
    state, loop = ckpt.restore_latest(_state(0))
    assert int(state["step"]) == 1 and loop == {"epoch": 1}
    # the manager deletes leftovers in the background; the next save waits for that
    ckpt.save_latest(2, _state(2), {"epoch": 2})
    assert not partial.exists() and ckpt.latest.all_steps() == [1, 2]
    ckpt.close()


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
    ckpt = Checkpoints(tmp_path)
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        ckpt.restore_latest(_state(0))
    with pytest.raises(ValueError, match="no best_loss checkpoint"):
        ckpt.restore_best("best_loss", _state(0))
    ckpt.close()


def test_an_older_structure_is_one_clear_error_and_is_not_quarantined(tmp_path):
    def state(v, counter):
        bn = {"mean": jnp.full((2,), v, jnp.float32), "var": jnp.ones(2, jnp.float32)}
        if counter:
            bn["num_batches_tracked"] = jnp.int32(v)
        return {"batch_stats": {"bn1": bn}, "step": jnp.int32(v)}

    ckpt = Checkpoints(tmp_path, log=pytest.fail)  # no "falling back" warning either
    for step in (1, 2):  # written before BatchNorm kept num_batches_tracked
        ckpt.save_latest(step, state(step, counter=False), {"epoch": step})
        ckpt.save_best("best_loss", step, state(step, counter=False), {"val_loss": 1.0 / step})
    for restore in (ckpt.restore_latest, lambda t: ckpt.restore_best("best_loss", t)):
        with pytest.raises(CheckpointMismatchError) as info:
            restore(state(0, counter=True))
        message = str(info.value)
        assert "\n" not in message and "/2 does not fit: it was written" in message
        assert "before BatchNorm kept torch's num_batches_tracked" in message
        assert "batch_stats.bn1.num_batches_tracked" in message and "new --workdir" in message
    assert ckpt.latest.all_steps() == [1, 2] and not (tmp_path / "damaged").exists()
    restored, _ = ckpt.restore_latest(state(0, counter=False))  # the old structure still reads
    assert int(restored["step"]) == 2
    ckpt.close()
