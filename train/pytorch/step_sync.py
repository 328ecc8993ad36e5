"""The torch side of a compared training step, and setting both float32 sides to a reference.

`torch_loop` is one torch training step (`F.cross_entropy`, SGD or Adam) returning the state
`jaxloss.parity.compare_steps` compares; `sync_torch` and `sync_flax` set a float32 torch model and
a Flax `TrainState` to a (float64) torch run's state.

`train.pytorch.verify_steps` starts every compared training step of both float32 sides from the
float64 reference's state, rounded: parameters, BatchNorm running statistics and counters, and
the optimizer's moments and step, so that each step is judged on its own and float32 chaos (an
activation within rounding of a ReLU or max-pool kink) cannot carry over from one step to the
next; a step that fails is retried from a snapshot of all three sides (`snapshot`, `restore`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

__all__ = [
    "flax_loop",
    "flax_state",
    "restore",
    "snapshot",
    "sync_flax",
    "sync_torch",
    "torch_loop",
]


def flax_state(
    state_dict: Any,
    *,
    model: str,
    layout: str,
    num_classes: int,
    width: int,
    image_shape: tuple[int, int, int],
    tx: Any,
    dtype: Any = None,
) -> Any:
    """A `train.step.TrainState` of the `train.models` model holding a torch ``state_dict``.

    ``dtype=jnp.float64`` (call it under ``jax.enable_x64``): float64 parameters, statistics and
    computation, for the float64 comparison; default float32 (the trainer's own).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from train import models
    from train import step as step_lib
    from train.pytorch import port

    dtype = jnp.float32 if dtype is None else dtype
    abstract = nnx.eval_shape(
        lambda: models.create_model(
            model,
            num_classes=num_classes,
            width=width,
            image_shape=image_shape,
            dtype=dtype,
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)

    def widen(x: Any) -> Any:
        floating = np.issubdtype(x.dtype, np.floating)
        return jax.ShapeDtypeStruct(x.shape, dtype) if floating else x

    params, stats = jax.tree.map(widen, (params, stats))
    params, stats = port.from_torch(state_dict, params, stats, layout=layout)
    return step_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
        opt_state=tx.init(params), graphdef=graphdef, tx=tx,
    )  # fmt: skip


def flax_loop(
    state: Any, train_fn: Callable[..., Any], *, rename: Any, image_dtype: Any = None
) -> tuple[Callable[[Any], dict], dict[str, Any]]:
    """``(step, holder)``: one `train.step.train_step` on ``holder["state"]``, like `torch_loop`.

    ``step((images NCHW, labels))`` transposes the images to NHWC (cast to ``image_dtype``,
    default float32), trains, and returns `jaxloss.parity.nnx_training_state` with the loss in
    the parameters' dtype (float32 as torch's, or float64).
    """
    import jax
    import numpy as np

    from jaxloss import parity

    holder: dict[str, Any] = {"state": state}
    key = jax.random.key(0)

    def step(batch: tuple[Any, Any]) -> dict:
        x, y = batch
        images = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=image_dtype or np.float32)
        labels = y.astype(np.int32)
        new, m = train_fn(
            holder["state"], {"image": images, "label": labels, "mask": np.ones(len(y), bool)}, key
        )
        holder["state"] = new
        dtype = images.dtype.type
        loss = dtype(m.loss_sum) / dtype(m.count)  # in the compared dtype, as torch's
        return parity.nnx_training_state(new.model(), new.opt_state, loss=loss, rename=rename)

    return step, holder


def torch_loop(
    model: Any, optimizer: str, lr: float, *, momentum: float, eps: float
) -> tuple[Callable[[Any], dict], Any]:
    """``(step, optimizer)``: one torch training step on ``model`` in train mode, and its optimizer.

    ``step((images NCHW, labels))`` runs ``F.cross_entropy`` and ``SGD(lr, momentum)`` (or
    ``Adam(lr, eps=eps)``) and returns `jaxloss.parity.torch_training_state` with the loss.
    """
    import torch
    import torch.nn.functional as F

    from jaxloss import parity

    dtype = next(model.parameters()).dtype
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, eps=eps)
    model.train()

    def step(batch: tuple[Any, Any]) -> dict:
        x, y = batch
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(torch.from_numpy(x).to(dtype)), torch.from_numpy(y).long())
        loss.backward()
        opt.step()
        return parity.torch_training_state(model, opt, loss=loss.detach())

    return step, opt


def snapshot(model: Any, opt: Any) -> tuple[dict, dict]:
    """Copies of a torch model's and optimizer's state, for `restore`."""
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def restore(model: Any, opt: Any, saved: tuple[dict, dict]) -> None:
    """Sets a torch model and optimizer back to a `snapshot` (which stays as it was)."""
    model.load_state_dict(saved[0])
    opt.load_state_dict(copy.deepcopy(saved[1]))


def sync_torch(model: Any, opt: Any, src: Any, src_opt: Any) -> None:
    """Sets a float32 torch model and optimizer to a (float64) source's state, rounded."""
    import torch

    model.load_state_dict(src.state_dict())  # copy_ rounds to the destination's dtype
    opt.state.clear()
    for p, q in zip(model.parameters(), src.parameters(), strict=True):
        if q in src_opt.state:
            opt.state[p] = {
                k: v.detach().to(p.dtype).clone()
                if torch.is_tensor(v) and v.is_floating_point()
                else v  # fmt: skip
                for k, v in src_opt.state[q].items()
            }


def sync_flax(state: Any, src: Any, src_opt: Any, *, layout: str, step: int) -> Any:
    """A `train.step.TrainState` holding a torch model's and optimizer's state, in float32.

    Parameters, running statistics and counters go through `train.pytorch.port.from_torch`, and
    so do the optimizer moments (each in the parameters' layout), into optax's ``trace`` (SGD) or
    ``mu`` / ``nu`` and ``count`` (Adam) by name.
    """
    import jax
    import jax.numpy as jnp

    from train.pytorch import port

    sd = {k: v.detach().cpu().numpy() for k, v in src.state_dict().items()}
    params, stats = port.from_torch(sd, state.params, state.batch_stats, layout=layout)
    names = {id(p): n for n, p in src.named_parameters()}
    moments: dict[str, Any] = {}
    count = 0
    for optax_name, torch_name in (("trace", "momentum_buffer"), ("mu", "exp_avg"),
                                   ("nu", "exp_avg_sq")):  # fmt: skip
        values = {
            names[id(q)]: st[torch_name].detach().cpu().numpy()
            for q, st in src_opt.state.items()
            if torch_name in st
        }
        for st in src_opt.state.values():
            count = int(st.get("step", count))
        if values:
            moments[optax_name], _ = port.from_torch(
                {**sd, **values}, state.params, state.batch_stats, layout=layout
            )
    leaves = {k: iter(jax.tree.leaves(v)) for k, v in moments.items()}

    def put(path: tuple[Any, ...], leaf: Any) -> Any:
        keys = [getattr(k, "name", None) for k in path]
        for name, it in leaves.items():
            if name in keys:
                return next(it)
        if keys[-1:] == ["count"] and "ScaleByAdamState" in str(path):
            return jnp.asarray(count, leaf.dtype)  # Adam's bias-correction step
        return leaf

    opt_state = jax.tree_util.tree_map_with_path(put, state.opt_state)
    step_count = jnp.asarray(step, jnp.int32)
    return state.replace(step=step_count, params=params, batch_stats=stats, opt_state=opt_state)
