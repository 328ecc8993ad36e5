"""The row statistics of ``x @ W + b`` without the logits: a chunked ``jax.custom_vjp``.

Every softmax loss here depends on its logits only through ``z_t`` (the target logit), ``lse_o``
(the log-sum-exp over the *other* classes) and, for smoothing, ``z . v`` for a class vector ``v``
(`jaxloss._target_stats`). For logits ``z = x @ W + b`` (``x (A, D)``, ``W (D, C)``, ``b (C,)``)
these are computed here without an ``(A, C)`` array:

* ``z_t = x . W[:, t] + b_t``: a gather of ``A`` columns of ``W``, ``(A, D)``;
* ``z . v = x . (W v) + b . v``: one matrix-vector product;
* ``lse_o``: an online log-sum-exp over chunks of ``chunk_size`` classes. Each chunk's logits
  ``x @ W[:, c] + b[c]`` (``(A, chunk)``) are formed, the target column set to ``-inf`` (so the
  target's term is removed exactly, not subtracted), and the running ``(max, sum)`` updated: the
  two-pass exact method, one chunk at a time. ``lse_o`` is exact for every finite input.

The backward recomputes each chunk's logits and forms ``G = g_o * softmax_others`` on it; then
``dx += G @ W_c^T``, ``dW_c = x^T G``, ``db_c = sum(G)``. The target's and ``v``'s terms are rank-1
or a gather: ``dx += g_t W[:, t]^T + g_s (W v)^T``, ``dW[:, t] += g_t x``, ``dW += (x^T g_s) v^T``.
So the largest array of the forward and of the backward is ``(A, chunk_size)``. The recomputed
logits can round differently from the forward's (XLA fuses the two products differently), so
their softmax sums to 1 only within ``|z| * eps``; the backward moves that defect onto each row's
largest other class (found in the forward), so that it sums to 1 exactly, as the logits form's
does: otherwise a saturated row at logits of 1e3 would be 60 ulps off where the logits form is
exact. When all classes fit in one chunk, the forward saves that chunk's softmax instead (no
recompute: the logits form's memory, and its speed).

The backward is differentiable JAX code (``fori_loop``, matrix products, a scatter-add), so
second derivatives work by autodiff of it; each online-LSE sum is at least 1 (its terms are
relative to their maximum), so no ``1 / s**2`` overflows there.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def _chunk_logits(x, kernel, bias, labels, start, size):
    """``x @ W[:, start:start+size] + b[...]`` with the target column at ``-inf``: ``(A, size)``."""
    w = lax.dynamic_slice_in_dim(kernel, start, size, axis=1)
    b = lax.dynamic_slice_in_dim(bias, start, size)
    z = x @ w + b
    cols = start + jnp.arange(size, dtype=labels.dtype)
    return jnp.where(cols[None, :] == labels[:, None], -jnp.inf, z), w


def _over_chunks(num_classes: int, chunk_size: int, fn: Any, carry: Any) -> Any:
    """``carry = fn(carry, start, size)`` over the chunks: full ones in a loop, then the tail."""
    full, tail = divmod(num_classes, chunk_size)
    if full == 1:
        carry = fn(carry, 0, chunk_size)
    elif full > 1:
        carry = lax.fori_loop(0, full, lambda i, c: fn(c, i * chunk_size, chunk_size), carry)
    if tail:
        carry = fn(carry, full * chunk_size, tail)
    return carry


def _lse_step(x, kernel, bias, labels):
    def step(carry, start, size):
        m, s, k = carry
        z, _ = _chunk_logits(x, kernel, bias, labels, start, size)
        m_c = jnp.max(z, axis=1)
        k = jnp.where(m_c > m, start + jnp.argmax(z, axis=1).astype(k.dtype), k)
        m_new = lax.stop_gradient(jnp.maximum(m, m_c))
        shift = jnp.where(jnp.isneginf(m_new), 0, m_new)  # no -inf - -inf before a finite term
        s = s * jnp.exp(m - shift) + jnp.sum(jnp.exp(z - shift[:, None]), axis=1)
        return m_new, s, k

    return step


def _forward(x, kernel, bias, labels, v, chunk_size):
    num_classes = kernel.shape[1]
    w_t = jnp.take(kernel, labels, axis=1)  # (D, A): the targets' columns
    z_t = jnp.einsum("ad,da->a", x, w_t) + bias[labels]
    dot = None if v is None else x @ (kernel @ v) + bias @ v
    if num_classes <= chunk_size:  # one chunk: two passes, and its softmax kept for the backward
        z, _ = _chunk_logits(x, kernel, bias, labels, 0, num_classes)
        m = lax.stop_gradient(jnp.max(z, axis=1))
        e = jnp.exp(z - m[:, None])
        s = jnp.sum(e, axis=1)
        lse_o = m + jnp.log(s)
        saved: Any = e / s[:, None]
    else:
        init = (
            jnp.full(z_t.shape, -jnp.inf, x.dtype),
            jnp.zeros(z_t.shape, x.dtype),
            jnp.zeros(z_t.shape, labels.dtype),
        )
        m, s, top = _over_chunks(num_classes, chunk_size, _lse_step(x, kernel, bias, labels), init)
        lse_o = m + jnp.log(s)
        saved = top  # each row's largest other class
    return (z_t, lse_o, dot), (x, kernel, bias, labels, v, w_t, lse_o, saved)


def _backward(chunk_size, res, g):
    x, kernel, bias, labels, v, w_t, lse_o, saved = res
    g_t, g_o, g_s = g
    num_classes = kernel.shape[1]
    # The target's terms: a gather for dx, a scatter-add of A columns for dW and db.
    dx = g_t[:, None] * w_t.T
    dkernel = jnp.zeros_like(kernel).at[:, labels].add((g_t[:, None] * x).T)
    dbias = jnp.zeros_like(bias).at[labels].add(g_t)
    dv = None
    if v is not None:  # d(z . v)/dz_j = v_j: rank-1 terms
        dx = dx + g_s[:, None] * (kernel @ v)[None, :]
        xg = x.T @ g_s
        dkernel = dkernel + xg[:, None] * v[None, :]
        dbias = dbias + v * jnp.sum(g_s)
        dv = xg @ kernel + bias * jnp.sum(g_s)
    # x^T materialised once: XLA:CPU folds a transpose into the product's dimension numbers, and
    # its product contracting the rows of both operands ran 2.2x slower than a plain one
    # (1024x256 by 1024x32768: 419 ms against 188 ms); the barrier keeps the copy.
    xt = lax.optimization_barrier(x.T)
    if num_classes <= chunk_size:
        grad = g_o[:, None] * saved
        return dx + grad @ kernel.T, dkernel + xt @ grad, dbias + jnp.sum(grad, axis=0), dv

    def step(carry, start, size):
        dx, dk, db, total = carry
        z, w = _chunk_logits(x, kernel, bias, labels, start, size)
        p = jnp.exp(z - lse_o[:, None])  # softmax of the others: 0 at the target (z = -inf)
        grad = g_o[:, None] * p
        dx = dx + grad @ w.T
        dk_c = lax.dynamic_slice_in_dim(dk, start, size, axis=1) + xt @ grad
        db_c = lax.dynamic_slice_in_dim(db, start, size) + jnp.sum(grad, axis=0)
        dk = lax.dynamic_update_slice_in_dim(dk, dk_c, start, axis=1)
        db = lax.dynamic_update_slice_in_dim(db, db_c, start, axis=0)
        return dx, dk, db, total + jnp.sum(p, axis=1)

    init = (dx, dkernel, dbias, jnp.zeros_like(lse_o))
    dx, dkernel, dbias, total = _over_chunks(num_classes, chunk_size, step, init)
    # The recomputed logits may round differently from the forward's (XLA fuses the two products
    # differently), so their softmax sums to 1 only within |z| * eps: at logits of 1e3 that is 60
    # ulps, and a saturated row's gradient would be that far off where the logits form's is exact.
    # The defect goes to each row's largest other class: the softmax then sums to 1 exactly.
    top = saved
    fix = g_o * (1 - total)
    dx = dx + fix[:, None] * jnp.take(kernel, top, axis=1).T
    dkernel = dkernel.at[:, top].add((fix[:, None] * x).T)
    dbias = dbias.at[top].add(fix)
    return dx, dkernel, dbias, dv


def _stats(x, kernel, bias, labels, v, chunk_size):
    return _forward(x, kernel, bias, labels, v, chunk_size)[0]


_stats = jax.custom_vjp(_stats, nondiff_argnums=(5,))


def _stats_fwd(x, kernel, bias, labels, v, chunk_size):
    return _forward(x, kernel, bias, labels, v, chunk_size)


def _stats_bwd(chunk_size, res, g):
    dx, dkernel, dbias, dv = _backward(chunk_size, res, g)
    return dx, dkernel, dbias, None, dv


_stats.defvjp(_stats_fwd, _stats_bwd)


def linear_target_stats(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    v: jax.Array | None,
    *,
    chunk_size: int,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``(z_t, lse_o, z . v or None)`` of ``z = x @ kernel + bias``, each ``(A,)``, no ``(A, C)``.

    Args:
      x: float ``(A, D)`` features (callers zero masked rows and cast to the compute dtype).
      kernel: ``(D, C)``, ``C >= 2``, the same dtype.
      bias: ``(C,)``, the same dtype (zeros for none).
      labels: int ``(A,)`` in ``[0, C)`` (callers sanitise labels first).
      v: ``None`` or a ``(C,)`` class vector (smoothing).
      chunk_size: classes per chunk (static).

    >>> x, w = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 1.0, 0.5], [1.0, 0.0, -1.0]])
    >>> z_t, lse_o, _ = linear_target_stats(x, w, jnp.zeros(3), jnp.array([0]), None, chunk_size=2)
    >>> float(z_t[0]), round(float(lse_o[0]), 4)  # logits [2, 1, -1.5]: log(e + e**-1.5)
    (2.0, 1.0789)
    """
    return _stats(x, kernel, bias, labels, v, chunk_size)
