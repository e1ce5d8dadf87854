"""grafanalib plumbing for the dashboards: data source references, layout, runbook links.

:class:`PanelBuilder` places panels left to right on Grafana's 24-column grid, gives every
panel and target the ``${datasource}`` variable, and turns alert names into panel links
to their runbook pages. What the panels show lives in :mod:`pyrallel.monitoring.dashboards`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafanalib.core import (
    GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
    Dashboard,
    DataLink,
    GridPos,
    RowPanel,
    Target,
    Templating,
    TimeSeries,
)

from pyrallel.monitoring import alerts

DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
"""Reference to the dashboard's ``datasource`` template variable."""

SCHEMA_VERSION = 39
"""Grafana dashboard schema the JSON is written for (Grafana 10.4 and later)."""

_GRID_COLUMNS = 24
_REF_IDS = "ABCDEFGHIJ"


def steps(*pairs: tuple[str, float | None]) -> list[dict[str, Any]]:
    """Threshold steps: ``("green", None)`` is the base colour, then ``(colour, from)``."""
    return [{"color": color, "value": value} for color, value in pairs]


class PanelBuilder:
    """Collects one dashboard's panels in reading order."""

    def __init__(self, runbook_base_url: str) -> None:
        self.base = runbook_base_url
        self.panels: list[Any] = []
        self._x = 0
        self._y = 0
        self._row_height = 0

    def _grid(self, w: int, h: int) -> Any:
        if self._x + w > _GRID_COLUMNS:
            self._x, self._y, self._row_height = 0, self._y + self._row_height, 0
        pos = GridPos(h=h, w=w, x=self._x, y=self._y)
        self._x += w
        self._row_height = max(self._row_height, h)
        return pos

    def row(self, title: str) -> None:
        """Start a new row (a full-width row panel) below everything placed so far."""
        self._y += self._row_height
        row = RowPanel(title=title, gridPos=GridPos(h=1, w=_GRID_COLUMNS, x=0, y=self._y))
        self.panels.append(row)
        self._x, self._y, self._row_height = 0, self._y + 1, 0

    def add(
        self,
        panel_type: Any,
        queries: Sequence[tuple[str, str]],
        *,
        width: int,
        height: int,
        alert_names: Sequence[str] = (),
        **options: Any,
    ) -> None:
        """Place a grafanalib panel of ``panel_type``; ``queries`` are (PromQL, legend)."""
        targets = [
            Target(expr=expr, legendFormat=legend, refId=_REF_IDS[i], datasource=DATASOURCE)
            for i, (expr, legend) in enumerate(queries)
        ]
        links = [
            DataLink(
                title=f"Runbook: {name}",
                linkUrl=alerts.runbook_url(self.base, name),
                isNewTab=True,
            )
            for name in alert_names
        ]
        self.panels.append(
            panel_type(
                dataSource=DATASOURCE,
                targets=targets,
                gridPos=self._grid(width, height),
                links=links,
                **options,
            )
        )

    def timeseries(
        self,
        title: str,
        queries: Sequence[tuple[str, str]],
        *,
        description: str,
        unit: str = "short",
        width: int = 12,
        height: int = 8,
        stacked: bool = False,
        threshold_steps: list[dict[str, Any]] | None = None,
        alert_names: Sequence[str] = (),
    ) -> None:
        """A time series; ``threshold_steps`` are drawn as dashed lines."""
        self.add(
            TimeSeries,
            queries,
            width=width,
            height=height,
            alert_names=alert_names,
            title=title,
            description=description,
            unit=unit,
            fillOpacity=40 if stacked else 10,
            stacking={"mode": "normal", "group": "A"} if stacked else {"mode": "none"},
            thresholds=threshold_steps or steps(("green", None)),
            thresholdsStyleMode="dashed" if threshold_steps else "off",
            legendDisplayMode="table",
            legendPlacement="right" if width >= 12 else "bottom",
            legendCalcs=["lastNotNull", "max"],
            tooltipMode="multi",
        )

    def dashboard(
        self,
        *,
        uid: str,
        title: str,
        description: str,
        links: list[Any],
        variables: list[Any],
    ) -> Any:
        """The finished dashboard, with panel ids numbered in reading order."""
        return Dashboard(
            title=title,
            uid=uid,
            description=description,
            tags=["pyrallel", "kafka"],
            editable=True,
            graphTooltip=GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
            refresh="30s",
            schemaVersion=SCHEMA_VERSION,
            timezone="browser",
            links=links,
            templating=Templating(list=variables),
            panels=self.panels,
        ).auto_panel_ids()
