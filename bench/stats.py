"""Percentiles, per-metric summaries, ratios and target checks: plain numbers, no I/O."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Metric",
    "Summary",
    "Target",
    "check_target",
    "percentile",
    "ratio",
    "summarize",
    "target_gap",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    fraction = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from the issue: `op` is "<=" or ">=", `on` names what it is judged on.

    `on` is "median" or "p95" (the metric's own value), "vs_orthanc" or "vs_ceiling" (the
    ratio of our median to theirs).
    """

    op: str
    value: float
    on: str = "median"
    text: str = ""
    backends: tuple[str, ...] = ("ours", "ours_pg")  # which of our servers it applies to


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure of the report: what is measured, in which unit, and which way is better."""

    id: str
    group: str
    label: str
    unit: str  # "ms", "MB/s", "inst/s", "req/s"
    higher_is_better: bool
    target: Target | None = None
    meaning: str = ""


@dataclass(slots=True)
class Summary:
    """A metric measured on one server: median and p95 (or n/a with the reason)."""

    median: float | None = None
    p95: float | None = None
    n: int = 0
    errors: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.median is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "median": _round(self.median),
            "p95": _round(self.p95),
            "n": self.n,
            "errors": self.errors,
        }
        if self.note:
            out["note"] = self.note
        if self.extra:
            out["extra"] = self.extra
        return out


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    return float(f"{value:.4g}")


def summarize(samples: Sequence[float], higher_is_better: bool, *, errors: int = 0) -> Summary:
    """Median and the p95 on the bad side: slowest 5 % for times, lowest 5 % for rates."""
    if not samples:
        return Summary(errors=errors, note="no successful samples")
    p95 = percentile(samples, 5 if higher_is_better else 95)
    return Summary(statistics.median(samples), p95, len(samples), errors)


def ratio(ours: Summary, theirs: Summary) -> float | None:
    """ours.median / theirs.median, or None when either is missing or zero."""
    if ours.median is None or theirs.median is None or theirs.median == 0:
        return None
    return ours.median / theirs.median


def check_target(target: Target, ours: Summary, vs: dict[str, Summary]) -> bool | None:
    """True/False when the target can be judged, None when a figure is n/a."""
    if target.on == "median":
        value = ours.median
    elif target.on == "p95":
        value = ours.p95
    elif target.on == "vs_orthanc":
        value = ratio(ours, vs["orthanc"]) if "orthanc" in vs else None
    elif target.on == "vs_ceiling":
        value = ratio(ours, vs["ceiling"]) if "ceiling" in vs else None
    else:
        raise ValueError(f"unknown target basis {target.on!r}")
    if value is None:
        return None
    if ours.errors and target.on in ("median", "p95"):
        return False
    if target.op == "<=":
        return value <= target.value
    if target.op == ">=":
        return value >= target.value
    raise ValueError(f"unknown target operator {target.op!r}")


def target_gap(target: Target, ours: Summary, vs: dict[str, Summary]) -> str:
    """How far a figure is from its target, in words ("met", "+3.1 ms (62 %) over")."""
    if target.on == "median":
        value = ours.median
    elif target.on == "p95":
        value = ours.p95
    elif target.on == "vs_orthanc":
        value = ratio(ours, vs["orthanc"]) if "orthanc" in vs else None
    else:
        value = ratio(ours, vs["ceiling"]) if "ceiling" in vs else None
    verdict = check_target(target, ours, vs)
    if value is None or verdict is None:
        return "n/a"
    if verdict:
        return "met"
    if target.value == 0:
        return "missed"
    off = abs(value - target.value) / abs(target.value) * 100
    return f"missed by {off:.0f} %"
