"""Telemetry: metric catalog, OpenTelemetry metrics and spans, the HTTP endpoint."""
