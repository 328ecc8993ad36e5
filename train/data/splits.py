"""Seeded, deterministic index arithmetic: seeds by purpose, the train/val split, the imbalance.

Every random choice of the input pipeline derives its seed from the run's seed and a purpose
(`derive_seed`), so the split, the imbalance subsample, the shuffle and the augmentation of one
epoch never depend on each other or on how many batches were read before.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_imbalance", "derive_seed", "split_train_val"]

# Purposes of derive_seed (train.data.pipeline uses the last two).
_SPLIT, _IMBALANCE, _SHUFFLE, _AUGMENT = 0, 1, 2, 3


def derive_seed(*words: int) -> int:
    """Returns a 32-bit seed that is a pure function of ``words``.

    Examples:
        >>> derive_seed(0, 1) == derive_seed(0, 1), derive_seed(0, 1) == derive_seed(1, 0)
        (True, False)
    """
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


def split_train_val(n: int, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of ``range(n)`` (``torch.utils.data.random_split``).

    Args:
        n: number of examples.
        val_fraction: fraction for validation, in ``[0, 1)``; the count is rounded.
        seed: split seed.

    Returns:
        ``(train_indices, val_indices)``, each sorted int64, disjoint, covering ``range(n)``.

    Examples:
        >>> train, val = split_train_val(10, val_fraction=0.2, seed=0)
        >>> len(train), len(val), sorted(train.tolist() + val.tolist()) == list(range(10))
        (8, 2, True)
    """
    perm = np.random.default_rng(derive_seed(seed, _SPLIT)).permutation(n)
    n_val = int(round(val_fraction * n))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def apply_imbalance(
    indices: np.ndarray, labels: np.ndarray, *, cls: int, fraction: float, seed: int
) -> np.ndarray:
    """Keeps a random ``fraction`` of class ``cls`` among ``indices`` (seed 003's imbalance).

    Args:
        indices: int indices of shape ``(N,)`` into ``labels``.
        labels: int labels of the whole pool.
        cls: the class to thin out.
        fraction: kept fraction in ``(0, 1]``; ``round(fraction * count)`` examples
            are kept, at least one.
        seed: subsample seed.

    Returns:
        The sorted kept indices: every index of another class, and the subsample.

    Examples:
        >>> labels = np.array([0, 1, 1, 1, 1, 0])
        >>> apply_imbalance(np.arange(6), labels, cls=1, fraction=0.5, seed=0).size
        4
    """
    indices = np.asarray(indices)
    is_cls = labels[indices] == cls
    mine = indices[is_cls]
    if mine.size == 0:
        return np.sort(indices)
    keep = max(1, int(round(fraction * mine.size)))
    kept = np.random.default_rng(derive_seed(seed, _IMBALANCE)).choice(
        mine, size=keep, replace=False
    )
    return np.sort(np.concatenate([indices[~is_cls], kept]))
