"""The overview's picture: deliveries over the last 24 hours, delivered against failed.

Drawn on the server as SVG geometry (the template writes the elements), so it
needs no JavaScript and no charting library. A delivery counts in the hour of
its last attempt, by that attempt's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import tokenstore

HOURS = 24
BAR_STEP = 20
BAR_WIDTH = 14
PLOT_LEFT = 40
PLOT_TOP = 10
PLOT_HEIGHT = 120
WIDTH = PLOT_LEFT + HOURS * BAR_STEP + 10
HEIGHT = PLOT_TOP + PLOT_HEIGHT + 30

_OUTCOMES = """
SELECT CAST((julianday(?) - julianday("last_attempt_at")) * 24 AS INTEGER), "status", count(*)
FROM "{table}"
WHERE "last_attempt_at" > ? AND "status" IN ('delivered', 'failed', 'dead')
GROUP BY 1, 2
"""


@dataclass
class Bar:
    """One hour's column: delivered at the bottom, failed stacked on top."""

    x: int
    hours_ago: int
    delivered: int
    failed: int
    delivered_y: float
    delivered_height: float
    failed_y: float
    failed_height: float


@dataclass
class Chart:
    width: int
    height: int
    plot_left: int
    plot_top: int
    plot_bottom: int
    top_count: int
    bars: list[Bar]
    delivered: int
    failed: int


def hourly_outcomes(store: tokenstore.Store, now: datetime) -> list[tuple[int, int]]:
    """(delivered, failed) per hour, oldest hour first; failed includes given-up (dead)."""
    counts = [[0, 0] for _ in range(HOURS)]
    table = tokenstore.WebhookDelivery._meta.table_name
    since = now - timedelta(hours=HOURS)
    stamp = tokenstore.WebhookDelivery.last_attempt_at.db_value
    rows = store.db.execute_sql(_OUTCOMES.format(table=table), (stamp(now), stamp(since)))
    for hours_ago, status, count in rows:
        if 0 <= hours_ago < HOURS:
            counts[HOURS - 1 - hours_ago][0 if status == "delivered" else 1] += count
    return [(delivered, failed) for delivered, failed in counts]


def chart(outcomes: list[tuple[int, int]]) -> Chart:
    """Geometry for ``outcomes`` (oldest hour first), scaled so the busiest hour fills the plot."""
    top = max([1, *(d + f for d, f in outcomes)])
    bottom = PLOT_TOP + PLOT_HEIGHT
    bars = []
    for index, (delivered, failed) in enumerate(outcomes):
        delivered_height = PLOT_HEIGHT * delivered / top
        failed_height = PLOT_HEIGHT * failed / top
        bars.append(
            Bar(
                x=PLOT_LEFT + index * BAR_STEP + (BAR_STEP - BAR_WIDTH) // 2,
                hours_ago=len(outcomes) - index,
                delivered=delivered,
                failed=failed,
                delivered_y=round(bottom - delivered_height, 1),
                delivered_height=round(delivered_height, 1),
                failed_y=round(bottom - delivered_height - failed_height, 1),
                failed_height=round(failed_height, 1),
            )
        )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=PLOT_LEFT,
        plot_top=PLOT_TOP,
        plot_bottom=bottom,
        top_count=top,
        bars=bars,
        delivered=sum(d for d, _ in outcomes),
        failed=sum(f for _, f in outcomes),
    )
