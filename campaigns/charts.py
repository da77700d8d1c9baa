"""The run results chart, drawn on the server as inline SVG (no scripts, no CDN).

One step line per series showing how many messages had reached that stage
so far, over the run's time buckets, with the totals in the legend.
"""

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.dateformat import format as date_format

from campaigns.selectors import RESULT_SERIES, RunResults

WIDTH, HEIGHT = 860, 320
LEFT, RIGHT, TOP, BOTTOM = 56, 20, 16, 44
# Okabe-Ito colours (distinguishable with colour-blindness); bounced is also dashed.
STYLES = {
    "sent": ("Sent", "#0072B2", ""),
    "delivered": ("Delivered", "#009E73", ""),
    "opened": ("Opened", "#CC79A7", ""),
    "clicked": ("Clicked", "#E69F00", ""),
    "bounced": ("Bounced", "#D55E00", "6 4"),
}
TICK_STEPS = {
    "minute": [1, 2, 5, 10, 15, 30, 60, 120, 180],
    "hour": [60, 120, 180, 360, 720, 1440, 2880],
    "day": [1440, 2 * 1440, 7 * 1440, 14 * 1440, 28 * 1440],
    "week": [7 * 1440, 14 * 1440, 28 * 1440, 91 * 1440],
    "month": [30 * 1440, 91 * 1440, 182 * 1440, 365 * 1440],
}
TICK_FORMATS = {"minute": "H:i", "hour": "M j, H:i", "day": "M j", "week": "M j", "month": "M Y"}
MAX_X_TICKS = 8


@dataclass
class Line:
    key: str
    label: str
    colour: str
    dash: str
    total: int
    percent: str  # of sent
    path: str
    points: list[tuple[float, float, str]]  # x, y, tooltip


@dataclass
class Tick:
    at: float
    label: str


@dataclass
class Chart:
    width: int
    height: int
    plot: tuple[int, int, int, int]  # left, top, right, bottom
    lines: list[Line]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    unit: str
    description: str


def _nice_ceiling(value: int) -> tuple[int, int]:
    """(axis maximum, tick step): a round maximum at or above ``value``, about five ticks."""
    if value <= 5:
        return max(value, 1), 1
    magnitude = 10 ** math.floor(math.log10(value / 5))
    for factor in (1, 2, 5, 10):
        step = magnitude * factor
        if value / step <= 5:
            return step * math.ceil(value / step), step
    return value, value


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _x_ticks(start: datetime, end: datetime, unit: str, x) -> list[Tick]:
    minutes = (end - start) / timedelta(minutes=1)
    step = next((s for s in TICK_STEPS[unit] if minutes / s <= MAX_X_TICKS), TICK_STEPS[unit][-1])
    local = timezone.localtime(start)
    offset = local.utcoffset().total_seconds() / 60 if local.utcoffset() else 0
    first_minute = math.ceil((start.timestamp() / 60 + offset) / step) * step - offset
    ticks = []
    at = datetime.fromtimestamp(first_minute * 60, tz=start.tzinfo)
    while at <= end and len(ticks) <= MAX_X_TICKS + 1:
        ticks.append(Tick(x(at), date_format(timezone.localtime(at), TICK_FORMATS[unit])))
        at += timedelta(minutes=step)
    return ticks


def results_chart(results: RunResults) -> Chart | None:
    """The chart's geometry for the template, or None when nothing was sent yet."""
    if results.start is None or results.end is None:
        return None
    left, top, right, bottom = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    totals = results.totals
    y_max, y_step = _nice_ceiling(max(totals.values()))
    seconds = max((results.end - results.start).total_seconds(), 1)

    def x(at: datetime) -> float:
        return round(left + (right - left) * (at - results.start).total_seconds() / seconds, 1)

    def y(count: int) -> float:
        return round(bottom - (bottom - top) * count / y_max, 1)

    lines = []
    for key in RESULT_SERIES:
        label, colour, dash = STYLES[key]
        path, points, so_far = [f"M{left},{bottom}"], [], 0
        for bucket, n in results.new[key]:
            so_far += n
            path.append(f"H{x(bucket)}V{y(so_far)}")
            when = timezone.localtime(bucket)
            points.append((x(bucket), y(so_far), f"{label}: {so_far} by {when:%Y-%m-%d %H:%M}"))
        path.append(f"H{right}")
        lines.append(
            Line(
                key=key,
                label=label,
                colour=colour,
                dash=dash,
                total=totals[key],
                percent=_percent(totals[key], totals["sent"]),
                path="".join(path),
                points=points,
            )
        )
    y_ticks = [Tick(y(v), str(v)) for v in range(0, y_max + 1, y_step)]
    description = ", ".join(f"{line.label.lower()} {line.total}" for line in lines)
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        plot=(left, top, right, bottom),
        lines=lines,
        x_ticks=_x_ticks(results.start, results.end, results.unit, x),
        y_ticks=y_ticks,
        unit=results.unit,
        description=f"Messages so far, by {results.unit}: {description}.",
    )
