"""Telemetry: metric catalog, OpenTelemetry metrics and spans, the HTTP endpoint.

``serve(consumer, port=9464)`` exposes ``/metrics``, ``/status`` and ``/healthz`` (see
:mod:`pyrallel.observability.http`). ``metrics.OpenTelemetryTelemetry`` is what a
:class:`~pyrallel.ParallelConsumer` uses by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyrallel.observability.http import Server, serve

__all__ = ["Server", "serve"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the core imports this package for its hooks, and should not
    # pay for the OpenTelemetry SDK and the HTTP server unless they are used.
    if name in __all__:
        from pyrallel.observability import http

        return getattr(http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
