"""SVG drawn on the server: the executions-per-minute chart and an execution's timeline.

The markup uses presentation attributes only (no ``style``), so the strict
Content-Security-Policy applies; every text is escaped here (:func:`html.escape`), and the
result is :class:`markupsafe.Markup` for the templates.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from html import escape
from typing import Any

from markupsafe import Markup

from waxflow.recovery.index import normalize_date

COLORS = {"SUCCESS": "#2e7d32", "WARNING": "#f9a825", "FAILED": "#c62828",
          "RUNNING": "#0277bd", "RETRYING": "#8e24aa", "CREATED": "#546e7a",
          "SKIPPED": "#9e9e9e"}
ORDER = ("FAILED", "WARNING", "SKIPPED", "RETRYING", "RUNNING", "CREATED", "SUCCESS")
_FMT = "%Y-%m-%dT%H:%M:%S.%fZ"


def color(state: object) -> str:
    """The fill for a state (grey when unknown)."""
    return COLORS.get(str(state), "#78909c")


def state_chart(rows: list[dict[str, Any]], *, width: int = 900, height: int = 180) -> Markup:
    """Stacked bars: executions per bucket (``rows`` from the histogram, oldest first), one
    colour per state, with a legend; a note when there is nothing to draw."""
    buckets: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rows:
        buckets[str(r["bucket"])][str(r["state"])] = int(r["count"])
    if not buckets:
        return Markup(f'<svg class="chart" viewBox="0 0 {width} 40" width="100%" '
                      'role="img" aria-label="no executions"><text x="8" y="24" '
                      'fill="#555">no executions in this range</text></svg>')
    names = sorted(buckets)[-120:]  # at most two hours of minutes
    top = max(sum(buckets[b].values()) for b in names) or 1
    left, bottom, right, legend = 40, 22, 8, 22
    plot_h = height - bottom - legend
    slot = (width - left - right) / len(names)
    bar = max(1.0, slot * 0.8)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
           f'aria-label="executions per minute by state">']
    out.append(f'<text x="{left - 4}" y="{legend + 10}" text-anchor="end" font-size="10" '
               f'fill="#555">{top}</text>')
    out.append(f'<text x="{left - 4}" y="{legend + plot_h}" text-anchor="end" font-size="10" '
               'fill="#555">0</text>')
    out.append(f'<line x1="{left}" y1="{legend + plot_h}" x2="{width - right}" '
               f'y2="{legend + plot_h}" stroke="#999"/>')
    for i, name in enumerate(names):
        x = left + i * slot + (slot - bar) / 2
        y = float(legend + plot_h)
        for state in ORDER + tuple(s for s in buckets[name] if s not in ORDER):
            n = buckets[name].get(state, 0)
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            label = escape(f"{_minute(name)}  {state}: {n}")
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                       f'fill="{color(state)}" data-state="{escape(state)}" '
                       f'data-count="{n}"><title>{label}</title></rect>')
    for i in sorted({0, len(names) - 1, len(names) // 2}):
        x = left + i * slot + slot / 2
        out.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" font-size="10" '
                   f'fill="#555">{escape(_minute(names[i]))}</text>')
    seen = [s for s in ORDER if any(s in buckets[b] for b in names)]
    for i, state in enumerate(seen):
        x = left + i * 95
        out.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{color(state)}"/>'
                   f'<text x="{x + 14}" y="13" font-size="11" fill="#333">'
                   f'{escape(state)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _minute(bucket: str) -> str:
    norm = normalize_date(bucket)
    return f"{norm[5:10]} {norm[11:16]}" if norm else bucket


def _time(value: object) -> datetime | None:
    norm = normalize_date(value)
    return datetime.strptime(norm, _FMT) if norm else None


def timeline(doc: dict[str, Any], *, width: int = 900) -> Markup:
    """One row per task run, one bar per attempt placed on the execution's time axis (from
    its start to its end, or to the last attempt's end), coloured by the attempt's state."""
    runs = [t for t in doc.get("taskRuns") or [] if isinstance(t, dict)
            and not t.get("$truncated")]
    start = _time(doc.get("startDate"))
    ends = [_time(a.get("endDate")) for t in runs for a in t.get("attempts") or []
            if isinstance(a, dict)]
    end = _time(doc.get("endDate")) or max((e for e in ends if e), default=None)
    if not runs or start is None or end is None:
        return Markup("")
    span = max((end - start).total_seconds(), 1e-3)
    label_w, row_h, pad = 180, 22, 20
    plot_w = width - label_w - 10
    height = pad + row_h * len(runs) + 6
    out = [f'<svg class="timeline" viewBox="0 0 {width} {height}" width="100%" role="img" '
           'aria-label="task runs on a timeline">',
           f'<text x="{label_w}" y="12" font-size="10" fill="#555">0 ms</text>',
           f'<text x="{width - 10}" y="12" font-size="10" fill="#555" text-anchor="end">'
           f'{span * 1000:.0f} ms</text>']
    for i, tr in enumerate(runs):
        y = pad + i * row_h
        indent = 12 if tr.get("parentTaskId") else 0
        out.append(f'<text x="{4 + indent}" y="{y + 15}" font-size="12" fill="#222">'
                   f'{escape(str(tr.get("taskId")))[:30]}</text>')
        for n, att in enumerate(a for a in tr.get("attempts") or [] if isinstance(a, dict)):
            a0, a1 = _time(att.get("startDate")), _time(att.get("endDate"))
            if a0 is None:
                continue
            a1 = a1 or end
            x = label_w + plot_w * max(0.0, (a0 - start).total_seconds()) / span
            w = max(2.0, plot_w * (a1 - a0).total_seconds() / span)
            ms = (a1 - a0).total_seconds() * 1000
            tip = escape(f"{tr.get('taskId')} attempt {n + 1}: {att.get('state')} "
                         f"{ms:.0f} ms")
            out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                       f'fill="{color(att.get("state"))}" data-attempt="{n + 1}">'
                       f'<title>{tip}</title></rect>')
    out.append("</svg>")
    return Markup("".join(out))
