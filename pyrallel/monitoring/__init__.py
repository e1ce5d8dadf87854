"""Monitoring generated from one thresholds object.

:class:`Thresholds` feeds the Prometheus alert rules (:mod:`.alerts`), the Grafana
dashboards (:mod:`.dashboards`, needs the ``monitoring`` extra) and the runbook pages
(:mod:`.runbooks`); ``pyrallel generate`` (:mod:`.generate`) writes them all and
``pyrallel generate --check`` fails when a committed copy has drifted.
"""

from pyrallel.monitoring.alerts import DEFAULT_RUNBOOK_BASE_URL, alert_names, build_rules
from pyrallel.monitoring.thresholds import DEFAULT_THRESHOLDS, Thresholds

__all__ = [
    "DEFAULT_RUNBOOK_BASE_URL",
    "DEFAULT_THRESHOLDS",
    "Thresholds",
    "alert_names",
    "build_rules",
]
