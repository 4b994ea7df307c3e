"""The Grafana dashboard (deploy/grafana/flight-bookings.json) graphs what the service exports.

- It is a dashboard Grafana's "Import dashboard" takes: a dict with panels, uid
  `flight-bookings`, a `DS_PROMETHEUS` input that every panel and query uses, and the
  `instance` variable.
- Every panel that queries has a datasource and, for each query, a PromQL `expr`.
- Every `flight_bookings_*` metric its queries name (a histogram's `_bucket`, `_sum` and
  `_count` series by the histogram's name) is one that bookings_project.metrics declares.
- The gauges read from the database at scrape time have the same value on every host: a
  query aggregates them across instances with max(), never sum() (which would multiply
  them by the number of hosts).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_database  # The SQLite suite runs it (tests/conftest.py).

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_FILE = ROOT / "deploy" / "grafana" / "flight-bookings.json"
DATASOURCE_UID = "${DS_PROMETHEUS}"
UNITS = {"reqps", "s", "percentunit", "short"}

METRIC = re.compile(r"\bflight_bookings_[a-z_]+")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")

# Computed from the database at scrape time: the same value on every host.
DB_GAUGES = frozenset(
    {
        "flight_bookings_cleanup_backlog",
        "flight_bookings_cleanup_backlog_oldest_seconds",
        "flight_bookings_notification_deliveries",
        "flight_bookings_cleanup_last_run_age_seconds",
        "flight_bookings_cleanup_last_success_age_seconds",
        "flight_bookings_worker_heartbeat_age_seconds",
        "flight_bookings_task_queue_oldest_seconds",
        "flight_bookings_database_up",
    }
)

AGGREGATIONS = "sum|min|max|avg|group|stddev|stdvar|count|count_values|bottomk|topk|quantile"
# The text before a `(` that opens an aggregation's operand: `sum (`, `max by (work) (`.
AGGREGATION_BEFORE = re.compile(rf"\b({AGGREGATIONS})\s*(?:(?:by|without)\s*\([^()]*\)\s*)?$", re.IGNORECASE)


def declared_metric_names() -> frozenset[str]:
    """The full names of the metrics the service exports (a counter's with its `_total`): the
    events' and the state's."""
    from bookings_project.metrics import METRIC_NAMES
    from workflows.monitoring import STATE_METRIC_NAMES

    return METRIC_NAMES | STATE_METRIC_NAMES


DECLARED = declared_metric_names()


def _dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def _panels(panels: list[dict]) -> list[dict]:
    """Every panel, those inside a collapsed row's `panels` included."""
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))
    return found


def _expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every query: each panel target's and each template variable's."""
    found = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel.get('title')!r} target {target.get('refId')}", target.get("expr", "")))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if query:
            found.append((f"variable {variable['name']!r}", query))
    return found


def _metric_name(series: str) -> str:
    """The declared name a series belongs to: a histogram's series by the histogram's name."""
    if series in DECLARED:
        return series
    return HISTOGRAM_SERIES.sub("", series)


def _innermost_aggregation(expr: str, position: int) -> str | None:
    """The aggregation operator whose operand holds `expr[position]` most closely, if any.

    A stack of the open parentheses before `position`, each marked with the aggregation it
    opens the operand of (None for a function call, a grouping or a `by (...)` label list).
    """
    stack: list[str | None] = []
    for index, char in enumerate(expr[:position]):
        if char == "(":
            match = AGGREGATION_BEFORE.search(expr[:index])
            stack.append(match.group(1).lower() if match else None)
        elif char == ")" and stack:
            stack.pop()
    return next((name for name in reversed(stack) if name), None)


def test_the_dashboard_is_an_importable_dict_with_panels():
    dashboard = _dashboard()

    assert isinstance(dashboard, dict)
    assert isinstance(dashboard.get("panels"), list) and dashboard["panels"]
    assert dashboard["uid"] == "flight-bookings"
    assert dashboard["schemaVersion"] == 39
    assert [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    ids = [panel["id"] for panel in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_the_instance_variable_lists_the_hosts_and_can_take_several_or_all():
    variables = {variable["name"]: variable for variable in _dashboard()["templating"]["list"]}

    instance = variables["instance"]
    assert instance["datasource"]["uid"] == DATASOURCE_UID
    assert instance["definition"] == "label_values(flight_bookings_http_requests_total, instance)"
    assert instance["multi"] is True
    assert instance["includeAll"] is True


def test_every_panel_that_queries_has_a_datasource_and_an_expr():
    panels = [panel for panel in _panels(_dashboard()["panels"]) if panel.get("targets")]

    assert panels
    for panel in panels:
        assert panel.get("datasource", {}).get("uid") == DATASOURCE_UID, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", {}).get("uid", DATASOURCE_UID) == DATASOURCE_UID, panel["title"]
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), panel["title"]


def test_every_panel_but_a_row_has_a_unit():
    for panel in _panels(_dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit") in UNITS, panel["title"]


def test_every_metric_the_queries_name_is_declared():
    unknown = {
        (where, series)
        for where, expr in _expressions(_dashboard())
        for series in METRIC.findall(expr)
        if _metric_name(series) not in DECLARED
    }

    assert not unknown, f"not in bookings_project.metrics.METRIC_NAMES: {sorted(unknown)}"


def test_the_database_gauges_are_declared():
    assert DB_GAUGES <= DECLARED, sorted(DB_GAUGES - DECLARED)


def test_no_query_sums_a_database_gauge_across_hosts_they_take_the_max():
    misused = []
    for where, expr in _expressions(_dashboard()):
        for match in METRIC.finditer(expr):
            if match.group() not in DB_GAUGES:
                continue
            aggregation = _innermost_aggregation(expr, match.start())
            if aggregation != "max":
                misused.append((where, match.group(), aggregation))

    assert not misused, f"a database gauge not under max() (where, gauge, its aggregation): {misused}"


def test_the_check_for_sums_over_database_gauges_reads_promql_right():
    gauge = "flight_bookings_cleanup_backlog"

    def innermost(expr: str) -> str | None:
        return _innermost_aggregation(expr, expr.index(gauge))

    assert innermost(f"sum({gauge})") == "sum"
    assert innermost(f'sum by (work) ({gauge}{{instance=~"$instance"}})') == "sum"
    assert innermost(f"sum without (instance) (max_over_time({gauge}[5m]))") == "sum"
    assert innermost(f"max by (work) ({gauge})") == "max"
    assert innermost(f"sum(max by (work) ({gauge}))") == "max"
    assert innermost(f"sum(rate(flight_bookings_http_requests_total[5m])) / max({gauge})") == "max"
    assert innermost(f"{gauge}") is None
