"""The usual transposes between torch and Flax layouts, for activations and weights.

torch keeps images channels-first (``NCHW``), convolution weights ``(out, in, *kernel)`` (OIHW)
and `Linear` weights ``(out, in)``; Flax keeps images channels-last (``NHWC``), convolution kernels
``(*kernel, in, out)`` (HWIO) and `Linear` kernels ``(in, out)``. Every function takes NumPy
arrays, JAX arrays or torch tensors (detached) and returns a contiguous NumPy array; each pair is
inverse of the other, for any number of spatial dimensions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "conv_kernel_to_flax",
    "conv_kernel_to_torch",
    "linear_kernel_to_flax",
    "linear_kernel_to_torch",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
    "to_numpy",
]


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array of ``x`` (a torch tensor is detached and moved to the CPU first).

    Examples:
      >>> to_numpy([1.0, 2.0]).dtype
      dtype('float64')
    """
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check(x: np.ndarray, least: int, what: str) -> None:
    if x.ndim < least:
        raise ValueError(f"{what} needs an array of rank >= {least}, got shape {x.shape}")


def nchw_to_nhwc(x: Any) -> np.ndarray:
    """``(N, C, *spatial)`` -> ``(N, *spatial, C)``: torch activations to Flax's layout.

    Examples:
      >>> nchw_to_nhwc(np.zeros((2, 3, 5, 7))).shape
      (2, 5, 7, 3)
    """
    x = to_numpy(x)
    _check(x, 3, "nchw_to_nhwc")
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def nhwc_to_nchw(x: Any) -> np.ndarray:
    """``(N, *spatial, C)`` -> ``(N, C, *spatial)``: Flax activations to torch's layout.

    Examples:
      >>> nhwc_to_nchw(np.zeros((2, 5, 7, 3))).shape
      (2, 3, 5, 7)
    """
    x = to_numpy(x)
    _check(x, 3, "nhwc_to_nchw")
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def conv_kernel_to_flax(weight: Any) -> np.ndarray:
    """From torch ``Conv*d.weight (out, in, *kernel)`` -> Flax ``Conv.kernel (*kernel, in, out)``.

    Examples:
      >>> conv_kernel_to_flax(np.zeros((8, 3, 5, 5))).shape
      (5, 5, 3, 8)
    """
    w = to_numpy(weight)
    _check(w, 3, "conv_kernel_to_flax")
    return np.ascontiguousarray(np.transpose(w, (*range(2, w.ndim), 1, 0)))


def conv_kernel_to_torch(kernel: Any) -> np.ndarray:
    """Flax ``Conv.kernel (*kernel, in, out)`` -> torch ``Conv*d.weight (out, in, *kernel)``.

    Examples:
      >>> conv_kernel_to_torch(np.zeros((5, 5, 3, 8))).shape
      (8, 3, 5, 5)
    """
    k = to_numpy(kernel)
    _check(k, 3, "conv_kernel_to_torch")
    return np.ascontiguousarray(np.transpose(k, (k.ndim - 1, k.ndim - 2, *range(k.ndim - 2))))


def linear_kernel_to_flax(weight: Any) -> np.ndarray:
    """From torch ``Linear.weight (out, in)`` -> Flax ``Linear.kernel (in, out)``.

    Examples:
      >>> linear_kernel_to_flax(np.zeros((10, 64))).shape
      (64, 10)
    """
    w = to_numpy(weight)
    if w.ndim != 2:
        raise ValueError(f"linear_kernel_to_flax needs a 2-d weight, got shape {w.shape}")
    return np.ascontiguousarray(w.T)


def linear_kernel_to_torch(kernel: Any) -> np.ndarray:
    """Flax ``Linear.kernel (in, out)`` -> torch ``Linear.weight (out, in)``.

    Examples:
      >>> linear_kernel_to_torch(np.zeros((64, 10))).shape
      (10, 64)
    """
    k = to_numpy(kernel)
    if k.ndim != 2:
        raise ValueError(f"linear_kernel_to_torch needs a 2-d kernel, got shape {k.shape}")
    return np.ascontiguousarray(k.T)
