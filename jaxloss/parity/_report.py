"""The report a person reads: one line per compared output and gradient, the failures first."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jaxloss.parity._rules import Verdict

__all__ = ["Entry", "ParityError", "Report"]


class ParityError(AssertionError):
    """A comparison failed; the message is the whole report."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One compared array: which one, and its `Verdict`.

    Attributes:
      name: e.g. ``"value"``, ``"value[1]"``, ``"grad logits"``, ``"step 3 params/fc.weight"``.
      dtype: the dtype compared (``"float32"``, ``"float64"``).
      trial: which random draw (0-based).
      shape: the array's shape.
      rule: the rule's description.
      verdict: the figures.
    """

    name: str
    dtype: str
    trial: int
    shape: tuple[int, ...]
    rule: str
    verdict: Verdict

    @property
    def passed(self) -> bool:
        """Whether the rule held."""
        return self.verdict.passed


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _at(index: tuple[int, ...]) -> str:
    return str(tuple(index)).replace(" ", "")


@dataclasses.dataclass(frozen=True)
class Report:
    """Every comparison of a `compare` (or `compare_layers`, `compare_steps`) call.

    ``str(report)`` is a table: per output and gradient the max absolute and relative difference
    between JAX and torch and where (index) it is, each side's RMSE against the float64
    reference and which side is closer to it, the rule, and ``ok`` or ``FAIL: reason``.

    Examples:
      >>> from jaxloss.parity._rules import Verdict
      >>> v = Verdict(1e-7, (2,), 1e-7, (2,), 3e-8, 4e-8, True, "")
      >>> r = Report((Entry("value", "float32", 0, (4,), "rule", v),))
      >>> r.ok, r.failures, v.closer
      (True, (), 'jax')
    """

    entries: tuple[Entry, ...]
    title: str = "parity"

    @property
    def ok(self) -> bool:
        """True when there is at least one comparison and every one passed."""
        return bool(self.entries) and all(e.passed for e in self.entries)

    @property
    def failures(self) -> tuple[Entry, ...]:
        """The entries that failed, in the order compared."""
        return tuple(e for e in self.entries if not e.passed)

    @property
    def first_failure(self) -> Entry | None:
        """The first entry, in the order compared, that failed (e.g. the first diverging layer)."""
        return next(iter(self.failures), None)

    def worst(self, name_prefix: str = "") -> float:
        """The largest absolute difference among entries whose name starts with the prefix."""
        values = [e.verdict.max_abs for e in self.entries if e.name.startswith(name_prefix)]
        return max(values, default=0.0)

    def _head(self) -> str:
        n, bad = len(self.entries), len(self.failures)
        return f"{self.title}: {n} comparisons, " + (
            "all passed" if self.ok else (f"{bad} FAILED" if n else "nothing compared: FAILED")
        )

    def _table(self, entries: Sequence[Entry]) -> list[str]:
        rows = [("check", "dtype", "trial", "shape", "max|diff|", "at", "max rel", "at",
                 "jax err", "torch err", "closer", "result")]  # fmt: skip
        for e in entries:
            v = e.verdict
            rows.append(
                (
                    e.name,
                    e.dtype,
                    str(e.trial),
                    str(e.shape),
                    _fmt(v.max_abs),
                    _at(v.abs_at),
                    _fmt(v.max_rel),
                    _at(v.rel_at),
                    _fmt(v.err_jax),
                    _fmt(v.err_torch),
                    v.closer,
                    "ok" if v.passed else f"FAIL: {v.reason}",
                )  # fmt: skip
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = []
        for r in rows:
            cells = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False))
            lines.append(cells + "  " + r[-1])
        rules = sorted({e.rule for e in self.entries})
        lines.append("rule: " + "; ".join(rules) if rules else "rule: -")
        lines.append(
            "jax err / torch err: RMSE against the float64 reference; closer: the side nearer it"
        )
        return lines

    def __str__(self) -> str:
        """The whole table, failures first, with a one-line summary above it."""
        return "\n".join([self._head(), *self._table(sorted(self.entries, key=lambda e: e.passed))])

    def summary(self, rows: int = 10) -> str:
        """The summary line and at most ``rows`` rows: the failures, else the worst relative errors.

        Examples:
          >>> Report(()).summary()
          'parity: 0 comparisons, nothing compared: FAILED'
        """
        if not self.entries:
            return self._head()
        shown = self.failures or tuple(sorted(self.entries, key=lambda e: -e.verdict.max_rel))
        more = len(shown) - rows
        lines = [self._head(), *self._table(shown[:rows])]
        if more > 0:
            lines.insert(-2, f"... {more} more (print the report for all)")
        return "\n".join(lines)

    def assert_ok(self) -> Report:
        """Raises `ParityError` with the whole report unless `ok`; returns the report."""
        if not self.ok:
            raise ParityError(str(self))
        return self

    @staticmethod
    def merge(reports: Sequence[Report], title: str = "parity") -> Report:
        """One report of several (e.g. the float32 and the float64 run)."""
        return Report(tuple(e for r in reports for e in r.entries), title)
