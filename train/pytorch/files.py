"""Reading and writing torch state_dict files, safely (torch imported only here, lazily).

Files are read with `torch.load(path, map_location="cpu", weights_only=True)` (tensors and
containers only: no arbitrary object is ever unpickled) or, for `*.safetensors`, with
`safetensors.numpy` if installed; written with `torch.save` to a temporary name and renamed.
`train.pytorch.port` re-exports both functions and `PortError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from train.pytorch import PortError

__all__ = ["PortError", "load_state_dict", "save_state_dict"]


def _import_torch(why: str):
    try:
        import torch  # lazy: torch is needed only to read/write .pth files
    except ImportError:
        raise PortError(f"{why} needs PyTorch (pip install torch); it is not installed") from None
    return torch


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]  # a training checkpoint {"model_state_dict": ..., "epoch": ...}
                break
    if not isinstance(obj, Mapping) or not obj:
        raise PortError(
            f"{path} does not hold a state_dict (a non-empty dict of tensors), got "
            f"{type(obj).__name__}"
        )
    if all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}  # saved from DataParallel
    return obj


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a torch state_dict file as numpy arrays, without unpickling arbitrary objects.

    `*.safetensors` files are read with `safetensors.numpy` (if installed); anything else with
    `torch.load(path, map_location="cpu", weights_only=True)`. A `{"state_dict": ...}` /
    `{"model_state_dict": ...}` / `{"model": ...}` wrapper and DataParallel's `module.` prefix are
    removed. bfloat16/float16 tensors become float32.

    Raises:
      PortError: unreadable file, not a dict of tensors, or torch (safetensors) not installed.

    Examples:
      >>> load_state_dict("/nonexistent.pth")
      Traceback (most recent call last):
      ...
      train.pytorch.PortError: cannot read /nonexistent.pth: no such file
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PortError(f"cannot read {path}: no such file")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise PortError(
                f"reading {path} needs the safetensors package (pip install "
                "safetensors); it is not installed"
            ) from None
        try:
            return dict(load_file(path))
        except Exception as e:  # safetensors raises its own error types
            raise PortError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    torch = _import_torch(f"reading {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (weights_only refusal), RuntimeError, EOFError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PortError(
            f"cannot read {path} as a torch state_dict (weights_only=True): {first}"
        ) from None
    state_dict = _unwrap(obj, path)
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise PortError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        out[str(key)] = value.numpy()
    return out


def save_state_dict(state_dict: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Writes a state_dict (numpy arrays, e.g. from `to_torch`) as torch tensors with `torch.save`.

    The file loads with `torch.load(path, weights_only=True)` and `model.load_state_dict(...)`.
    It is written to a temporary file beside `path` and renamed, so a kill or a full disk never
    leaves a truncated file under the name.
    """
    torch = _import_torch(f"writing {os.fspath(path)}")
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        torch.save(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
