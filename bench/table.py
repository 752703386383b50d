"""Rows of samples per system, and the one table: medians with min–max, and ratios supervise/peer."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

PEERS = ("before", "circus", "supervisord")  # ratio columns: supervise / each


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


@dataclass
class Row:
    """One figure. `stat`: "median" shows median (min–max); "p50"/"p95"/"p99"/"max" a percentile alone.

    unit: "s" (shown as ms or s), "%", "MB", "/s", "ms" (already in ms), "us", "KB", "n".
    target: supervise's target as text with a check, e.g. ("<= 10 ms", lambda v: v <= 0.010).
    """

    scenario: str
    label: str
    unit: str
    stat: str = "median"
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # per system, replaces the cell (e.g. "no answer")
    target: tuple[str, object] | None = None

    def value(self, system: str) -> float | None:
        xs = self.samples.get(system)
        if not xs:
            return None
        if self.stat == "median":
            return statistics.median(xs)
        if self.stat == "max":
            return max(xs)
        return percentile(xs, float(self.stat[1:]))

    def cell(self, system: str) -> str:
        if system in self.notes:
            return self.notes[system]
        v = self.value(system)
        if v is None:
            return "-"
        xs = self.samples[system]
        text = fmt(v, self.unit)
        if self.stat == "median" and len(xs) > 1:
            text += f" ({fmt(min(xs), self.unit, bare=True, like=v)}–{fmt(max(xs), self.unit, bare=True, like=v)})"
        return text

    def ratio(self, peer: str) -> str:
        ours, theirs = self.value("supervise"), self.value(peer)
        if ours is None or theirs is None or peer in self.notes or "supervise" in self.notes:
            return ""
        if theirs == 0:
            return "∞" if ours else "1"
        r = ours / theirs
        return f"{r:.3g}" if r >= 0.01 else f"{r:.1e}"

    def verdict(self) -> str:
        if self.target is None:
            return ""
        text, check = self.target
        v = self.value("supervise")
        if v is None:
            return text
        return f"{text} {'ok' if check(v) else 'MISS'}"  # type: ignore[operator]


def fmt(v: float, unit: str, *, bare: bool = False, like: float | None = None) -> str:
    """`v` in `unit`; for seconds, in the scale (ms or s) that suits `like` (default: `v`)."""
    if unit == "s":
        scale = v if like is None else like
        if scale < 0.01:
            return f"{v * 1000:.2f}" if bare else f"{v * 1000:.2f} ms"
        if scale < 1:
            return f"{v * 1000:.0f}" if bare else f"{v * 1000:.0f} ms"
        return f"{v:.2f}" if bare else f"{v:.2f} s"
    if unit == "%":
        return f"{v:.2f}" if bare else f"{v:.2f} %"
    if unit == "MB":
        return f"{v:.1f}" if bare else f"{v:.1f} MB"
    if unit == "ms":
        return f"{v:.2f}" if bare else f"{v:.2f} ms"
    if unit == "us":
        return f"{v:.1f}" if bare else f"{v:.1f} µs"
    if unit == "KB":
        return f"{v:.1f}" if bare else f"{v:.1f} KB"
    if unit == "/s":
        return f"{v:.0f}" if bare else f"{v:.0f}/s"
    return f"{v:g}"


def render(rows: list[Row], systems: list[str]) -> str:
    """A Markdown table (readable as plain text too)."""
    peers = [p for p in PEERS if p in systems]
    head = [
        "scenario",
        "figure",
        *systems,
        *(f"sup/{p}" for p in peers),
        "target (supervise)",
    ]
    body = [
        [
            r.scenario,
            r.label,
            *(r.cell(s) for s in systems),
            *(r.ratio(p) for p in peers),
            r.verdict(),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"

    return "\n".join(
        [
            line(head),
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *map(line, body),
        ]
    )
