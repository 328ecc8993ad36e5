"""Process-level tuning for XLA:CPU: keep glibc from unmapping big buffers after every step.

XLA:CPU allocates each call's output and temporary buffers with ``malloc``. glibc serves requests
above its mmap threshold (128 KiB, rising dynamically to at most 32 MiB) with a fresh ``mmap`` and
returns them with ``munmap`` on ``free``; heap memory above the trim threshold is also given back.
Either way the next call touches new pages, and the kernel faults in and zeroes every 4 KiB page
again. For a (8192, 1000) float32 loss gradient (32 MiB) that costs more than the computation:
measured on a 2-core Xeon, ``jnp.exp`` of the array takes 2.0 ms when the buffer is reused and 9 ms
when the same call repeats back to back under the default settings (``benchmarks/bench_losses.py
--malloc default`` shows the effect on every loss).

:func:`tune_malloc` raises both thresholds with ``mallopt``, so freed buffers stay in the heap and
are reused: the process keeps its peak heap instead of returning it to the OS, as PyTorch's CUDA
caching allocator does for GPU memory. It is a no-op (returning ``False``) where the C library is
not glibc. The same effect without code: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge
pages) or ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment
before Python starts, or an allocator such as jemalloc or tcmalloc via ``LD_PRELOAD``.

``jaxloss-train`` and the benchmarks call it at start-up (``--malloc default`` turns it off);
library code (``jaxloss``) never changes process state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_MAX_INT = 2**31 - 1


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt  # noqa: B018 - and mallopt
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def tune_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = _MAX_INT) -> bool:
    """Sets glibc's mmap and trim thresholds (bytes); returns whether both were applied.

    Args:
      mmap_threshold: requests at least this large are still served by ``mmap`` (default 1 GiB).
      trim_threshold: free heap memory above this is returned to the OS (default 2 GiB - 1).

    Returns:
      ``True`` on glibc when ``mallopt`` accepted both values, ``False`` otherwise (other C
      libraries: nothing is changed).

    Examples:
      >>> tune_malloc() in (True, False)
      True
      >>> tune_malloc(mmap_threshold=-1)
      Traceback (most recent call last):
      ...
      ValueError: mmap_threshold must be in [0, 2147483647], got -1
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
            raise ValueError(f"{name} must be in [0, {_MAX_INT}], got {value!r}")
    libc = _glibc()
    if libc is None:
        return False
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    return ok_mmap and ok_trim
