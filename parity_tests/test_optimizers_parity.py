"""train.optim.create_optimizer against torch.optim.SGD / Adam / AdamW, step for step.

Both sides start from the same parameters and receive the same fixed random gradient sequence
(fed directly, no model), with a learning-rate change half-way (``set_learning_rate`` vs
``param_group["lr"]``). Parameters are compared after every step.

Tolerances: float64 ``rtol=1e-12, atol=1e-14`` (the two libraries evaluate the same formulas in a
different order, e.g. PyTorch's Adam uses ``lerp`` and ``sqrt(v) / sqrt(1 - b2**t)``, optax
``sqrt(v / (1 - b2**t))``; the differences are a few ulps); float32 ``rtol=1e-6, atol=1e-7``.
That float32 tolerance was 2e-5 while Adam used optax's ``scale_by_adam``, whose bias correction
``1 - b2**t`` is computed in float32 from a rounded ``b2`` (6.4e-6 relative at ``b2 = 0.999``);
``train.adam.scale_by_torch_adam`` computes it as torch does, and the optax version fails 1e-6
(four Adam/AdamW cases, checked by substituting it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from train.optim import create_optimizer, get_learning_rate, set_learning_rate

NUM_STEPS = 8
LR_CHANGE_STEP = 4  # steps 0..3 use LR, steps 4.. use NEW_LR_FACTOR * LR
NEW_LR_FACTOR = 0.3
SHAPES = {"w": (3, 4), "b": (4,)}

TOL = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=1e-6, atol=1e-7)}

# (id, create_optimizer kwargs, torch constructor)
CASES = [
    (
        "sgd",
        dict(name="sgd", learning_rate=0.1, momentum=0.9),
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    ),
    (
        "sgd_no_momentum",
        dict(name="sgd", learning_rate=0.1, momentum=0.0),
        lambda p, lr: torch.optim.SGD(p, lr=lr),
    ),
    (
        "sgd_nesterov",
        dict(name="sgd", learning_rate=0.05, momentum=0.8, nesterov=True),
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.8, nesterov=True),
    ),
    (
        "sgd_weight_decay",
        dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.05),
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=0.05),
    ),
    (
        "sgd_nesterov_weight_decay",
        dict(name="sgd", learning_rate=0.1, momentum=0.5, nesterov=True, weight_decay=0.1),
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5, nesterov=True, weight_decay=0.1),
    ),
    ("adam", dict(name="adam", learning_rate=1e-2), lambda p, lr: torch.optim.Adam(p, lr=lr)),
    (
        "adam_betas_eps",
        dict(name="adam", learning_rate=3e-2, b1=0.8, b2=0.95, eps=1e-3),
        lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.8, 0.95), eps=1e-3),
    ),
    (
        "adam_weight_decay_l2",
        dict(name="adam", learning_rate=1e-2, weight_decay=0.5),
        lambda p, lr: torch.optim.Adam(p, lr=lr, weight_decay=0.5),
    ),
    (
        "adamw",
        dict(name="adamw", learning_rate=1e-2, weight_decay=0.5),
        lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.5),
    ),
    (
        "adamw_no_decay",
        dict(name="adamw", learning_rate=1e-2),
        lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.0),
    ),
]


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    # Gradients of varying scale (incl. tiny ones where Adam's eps matters).
    scales = [1.0, 0.1, 3.0, 1e-4, 1.0, 0.5, 10.0, 1e-6]
    grads = [
        {k: (sc * rng.normal(size=s)).astype(dtype) for k, s in SHAPES.items()}
        for sc in scales[:NUM_STEPS]
    ]
    return params, grads


def _torch_trajectory(make_opt, lr, params, grads):
    tparams = {k: torch.tensor(v.copy()) for k, v in params.items()}
    opt = make_opt(list(tparams.values()), lr)
    out = []
    for step, g in enumerate(grads):
        if step == LR_CHANGE_STEP:
            for group in opt.param_groups:
                group["lr"] = lr * NEW_LR_FACTOR
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k].copy())
        opt.step()
        out.append({k: p.detach().numpy().copy() for k, p in tparams.items()})
    return out


def _jax_trajectory(tx, lr, params, grads):
    @jax.jit
    def step(p, s, g):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    p = jax.tree.map(jnp.asarray, params)
    s = tx.init(p)
    out = []
    for i, g in enumerate(grads):
        if i == LR_CHANGE_STEP:
            s = set_learning_rate(s, lr * NEW_LR_FACTOR)
        p, s = step(p, s, g)
        out.append(jax.tree.map(np.asarray, p))
    return out, s


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case_id, kwargs, make_torch", CASES, ids=[c[0] for c in CASES])
def test_matches_torch_step_for_step(case_id, kwargs, make_torch, dtype):
    params, grads = _problem(dtype)
    lr = kwargs["learning_rate"]
    torch_traj = _torch_trajectory(make_torch, lr, params, grads)
    with jax.enable_x64(dtype == np.float64):
        tx = create_optimizer(**kwargs)
        jax_traj, state = _jax_trajectory(tx, lr, params, grads)
        assert get_learning_rate(state).dtype == dtype
        np.testing.assert_allclose(
            float(get_learning_rate(state)),
            lr * NEW_LR_FACTOR,
            rtol=1e-7 if dtype == np.float32 else 0,
        )
    for step, (pj, pt) in enumerate(zip(jax_traj, torch_traj, strict=True)):
        for k in SHAPES:
            assert pj[k].dtype == dtype
            np.testing.assert_allclose(
                pj[k], pt[k], **TOL[dtype], err_msg=f"{case_id} {k} after step {step}"
            )
    # The run moved the parameters and the LR change mattered (the test can fail).
    moved = max(np.abs(jax_traj[-1][k] - params[k]).max() for k in SHAPES)
    assert moved > 1e-3


def test_lr_change_changes_the_trajectory():
    """Guard: without the mid-run LR change the torch trajectory differs.

    So the test above sees the LR change.
    """
    params, grads = _problem(np.float64)
    make = CASES[0][2]
    changed = _torch_trajectory(make, 0.1, params, grads)
    with jax.enable_x64(True):
        tx = create_optimizer("sgd", learning_rate=0.1)
        p = jax.tree.map(jnp.asarray, params)
        s = tx.init(p)
        for g in grads:  # never calls set_learning_rate
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
    assert np.abs(np.asarray(p["w"]) - changed[-1]["w"]).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Gradient accumulation (optax.MultiSteps).
# ---------------------------------------------------------------------------------------------
ACCUM_CASES = [
    dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.01),
    dict(name="adam", learning_rate=1e-2, weight_decay=0.1),
    dict(name="adamw", learning_rate=1e-2, weight_decay=0.1),
]


@pytest.mark.parametrize("kwargs", ACCUM_CASES, ids=[c["name"] for c in ACCUM_CASES])
def test_accumulation_equals_one_step_on_the_mean(kwargs):
    """accum_steps=N with N micro-gradients == one plain step with their mean (float64)."""
    n, real_steps = 3, 3
    params, grads = _problem(np.float64, seed=1)
    rng = np.random.default_rng(2)
    micro = [
        [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(n)]
        for _ in range(real_steps)
    ]
    with jax.enable_x64(True):
        plain = create_optimizer(**kwargs)
        accum = create_optimizer(**kwargs, accum_steps=n)
        p_plain = p_acc = jax.tree.map(jnp.asarray, params)
        s_plain, s_acc = plain.init(p_plain), accum.init(p_acc)
        plain_update, accum_update = jax.jit(plain.update), jax.jit(accum.update)
        for step in range(real_steps):
            if step == 1:  # an LR change, set mid-accumulation below on the accumulating side
                s_plain = set_learning_rate(s_plain, kwargs["learning_rate"] * 0.5)
            for i, g in enumerate(micro[step]):
                if step == 1 and i == 1:
                    s_acc = set_learning_rate(s_acc, kwargs["learning_rate"] * 0.5)
                    assert isinstance(s_acc, optax.MultiStepsState)
                    assert float(get_learning_rate(s_acc)) == kwargs["learning_rate"] * 0.5
                u, s_acc = accum_update(g, s_acc, p_acc)
                if i < n - 1:  # no step until the N-th micro-batch
                    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
                p_acc = optax.apply_updates(p_acc, u)
            mean = jax.tree.map(lambda *gs: np.mean(np.stack(gs), axis=0), *micro[step])
            u, s_plain = plain_update(mean, s_plain, p_plain)
            p_plain = optax.apply_updates(p_plain, u)
            for k in SHAPES:
                np.testing.assert_allclose(p_acc[k], p_plain[k], rtol=1e-12, atol=1e-14)
        assert np.abs(np.asarray(p_acc["w"]) - params["w"]).max() > 1e-3
        assert float(get_learning_rate(s_acc)) == kwargs["learning_rate"] * 0.5


def test_accumulation_matches_torch_accumulation_loop():
    """A torch loop summing loss/N micro-batch gradients, then stepping == accum_steps=N (f64)."""
    n = 4
    params, _ = _problem(np.float64, seed=3)
    rng = np.random.default_rng(4)
    micro = [
        [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(n)] for _ in range(2)
    ]
    tparams = {k: torch.tensor(v.copy()) for k, v in params.items()}
    opt = torch.optim.Adam(list(tparams.values()), lr=1e-2)
    for batch in micro:
        for p in tparams.values():
            p.grad = torch.zeros_like(p)
        for g in batch:  # loss / N, backward accumulates into .grad
            for k, p in tparams.items():
                p.grad += torch.tensor(g[k]) / n
        opt.step()
    with jax.enable_x64(True):
        tx = create_optimizer("adam", learning_rate=1e-2, accum_steps=n)
        p = jax.tree.map(jnp.asarray, params)
        s = tx.init(p)
        update = jax.jit(tx.update)
        for batch in micro:
            for g in batch:
                u, s = update(g, s, p)
                p = optax.apply_updates(p, u)
    for k in SHAPES:
        np.testing.assert_allclose(p[k], tparams[k].numpy(), rtol=1e-12, atol=1e-14)
