"""The one exception type of ``train.data``.

Every problem with the data itself (a missing directory, an empty class folder,
an unreadable image, a dataset that is not prepared) raises :class:`DataError`
with a one-line message that names the dataset, file or directory at fault, so
the CLI can print it and exit non-zero without a traceback. Bad *arguments*
(``batch_size=0``) raise a plain ``ValueError`` naming the argument; since
``DataError`` subclasses ``ValueError``, ``except ValueError`` catches both.
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A dataset cannot be found, prepared or read.

    Examples:
        >>> try:
        ...     raise DataError("imagefolder root /nowhere does not exist")
        ... except ValueError as e:
        ...     print(e)
        imagefolder root /nowhere does not exist
    """
