"""The Prometheus kit (deploy/prometheus/) is checked by promtool, and agrees with the service
and with its runbook.

- alerts.yml passes `promtool check rules`; prometheus.yml passes `promtool check config`
  (with its token file pointed at a temporary one, and alerts.yml next to it).
- Its alerts are the ones docs/operations.md has a section for (`### FlightBookings...`), and
  each alert's runbook_url is that section's anchor.
- Every `flight_bookings_*` metric a rule names is declared by bookings_project.metrics or
  workflows.monitoring (a histogram's series by the histogram's name), every `work` it names
  is a work set the gauges show, every endpoint a URL name; the database's gauges, the same
  on every host, are taken across hosts with max() or min(), never sum() (nor left per host).
- The unit tests (deploy/prometheus/alerts_test.yml) pass under `promtool test rules`, see
  every alert fire and stay quiet, and fail when a threshold (or a guard) in alerts.yml is
  changed: each mutation below must break the alert's own test.

Nothing here uses the database. A missing promtool skips the promtool tests, except in CI
(CI=true), where it fails them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.urls import NoReverseMatch, reverse

from bookings_project.metrics import METRIC_NAMES
from tests.helpers import needed
from tests.test_grafana_dashboard import _innermost_aggregation
from workflows.cleanup import WORK_SETS
from workflows.monitoring import STATE_METRIC_NAMES

pytestmark = pytest.mark.no_database  # The SQLite suite runs it (tests/conftest.py).

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
GROUP = "flight-bookings"
TOKEN_FILE = "/etc/prometheus/flight-bookings-metrics-token"

METRIC = re.compile(r"\bflight_bookings_[a-z_]+")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
ALERT_HEADING = re.compile(r"^###\s+(FlightBookings\w+)\s*$", re.MULTILINE)
# `work="..."`, `work=~"a|b"` (and the same for `endpoint`).
LABEL_MATCHER = re.compile(r'\b(work|endpoint)\s*=~?\s*"([^"]*)"')


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    needed("promtool (Debian: apt-get install prometheus)", path is not None, checks="Prometheus checks")
    return path


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _groups() -> list[dict]:
    return yaml.safe_load(ALERTS.read_text())["groups"]


def _rules() -> list[dict]:
    return [rule for group in _groups() for rule in group["rules"]]


def _alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in _rules()}


# Every name a scrape shows: the events' (a counter's with `_total`) and the state's.
DECLARED = METRIC_NAMES | STATE_METRIC_NAMES


def _metric_name(series: str) -> str:
    """The declared name a series belongs to: a histogram's series by the histogram's name."""
    return series if series in DECLARED else HISTOGRAM_SERIES.sub("", series)


# promtool ----------------------------------------------------------------------------------


def test_promtool_accepts_the_rules(promtool):
    result = run(promtool, "check", "rules", ALERTS)

    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_config_with_its_rules(promtool, tmp_path):
    token = tmp_path / "flight-bookings-metrics-token"
    token.write_text("a-metrics-token-of-some-length\n")
    config = CONFIG.read_text()
    assert TOKEN_FILE in config
    (tmp_path / "prometheus.yml").write_text(config.replace(TOKEN_FILE, str(token)))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")

    result = run(promtool, "check", "config", tmp_path / "prometheus.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout, result.stdout


def test_the_config_scrapes_every_host_with_the_token():
    config = yaml.safe_load(CONFIG.read_text())

    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["job_name"] == GROUP
    assert (job["metrics_path"], job["scheme"], job["scrape_interval"]) == ("/metrics", "https", "30s")
    assert job["authorization"] == {"type": "Bearer", "credentials_file": TOKEN_FILE}
    assert job["static_configs"] == [{"targets": ["bookings-1.internal:443", "bookings-2.internal:443"]}]


def test_the_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", ALERTS_TEST.name, cwd=PROMETHEUS)

    assert result.returncode == 0, result.stdout + result.stderr


# The rules ---------------------------------------------------------------------------------


def test_one_group_of_alerts_each_with_for_severity_and_annotations():
    groups = _groups()

    assert [group["name"] for group in groups] == [GROUP]
    for rule in groups[0]["rules"]:
        assert "alert" in rule, rule
        assert rule["alert"].startswith("FlightBookings"), rule["alert"]
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), rule["alert"]
        assert rule["labels"] == {"severity": rule["labels"].get("severity")}, rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, rule["alert"]
    names = [rule["alert"] for rule in groups[0]["rules"]]
    assert len(names) == len(set(names)), "an alert is named twice"


def test_the_alerts_are_the_sections_of_the_runbook():
    documented = set(ALERT_HEADING.findall(OPERATIONS.read_text()))

    assert set(_alerts()) == documented, (
        f"alerts without a `### <name>` section in docs/operations.md: {sorted(set(_alerts()) - documented)}; "
        f"sections without an alert: {sorted(documented - set(_alerts()))}"
    )


def test_each_runbook_url_is_its_alerts_section():
    for name, rule in _alerts().items():
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}", name


def test_every_metric_the_rules_name_is_declared():
    unknown = {
        (rule["alert"], series)
        for rule in _rules()
        for series in METRIC.findall(rule["expr"])
        if _metric_name(series) not in DECLARED
    }

    assert not unknown, f"not declared by bookings_project.metrics or workflows.monitoring: {sorted(unknown)}"


def test_database_gauges_are_taken_across_hosts_by_max_or_min_never_sum():
    misused = []
    for rule in _rules():
        for match in METRIC.finditer(rule["expr"]):
            if match.group() in STATE_METRIC_NAMES:
                aggregation = _innermost_aggregation(rule["expr"], match.start())
                if aggregation not in {"max", "min"}:
                    misused.append((rule["alert"], match.group(), aggregation))

    assert not misused, f"a database gauge not under max() or min() (alert, gauge, its aggregation): {misused}"


def test_the_work_sets_and_endpoints_the_rules_name_exist():
    work_sets = {work.name for work in WORK_SETS if work.label is not None}  # Those the gauges show.
    named = [
        (rule["alert"], label, value)
        for rule in _rules()
        for label, values in LABEL_MATCHER.findall(rule["expr"])
        for value in values.split("|")
    ]

    assert named
    for alert, label, value in named:
        if label == "work":
            assert value in work_sets, (alert, value)
        else:
            try:
                reverse(value)
            except NoReverseMatch:
                pytest.fail(f"{alert}: endpoint {value!r} is not a URL name")


# The unit tests ----------------------------------------------------------------------------


def _evaluations() -> list[dict]:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    return [evaluation for test in tests for evaluation in test.get("alert_rule_test", [])]


def test_the_unit_tests_see_every_alert_fire_and_stay_quiet():
    fired = {evaluation["alertname"] for evaluation in _evaluations() if evaluation.get("exp_alerts")}
    quiet = {evaluation["alertname"] for evaluation in _evaluations() if not evaluation.get("exp_alerts")}

    assert yaml.safe_load(ALERTS_TEST.read_text())["rule_files"] == ["alerts.yml"]
    assert set(_alerts()) - fired == set(), "never seen firing"
    assert set(_alerts()) - quiet == set(), "never seen quiet"
    assert {evaluation["alertname"] for evaluation in _evaluations()} <= set(_alerts())


# (alert, field, text in it, replacement; text None: the whole field): each must make that
# alert's unit test fail. Both sides of a threshold, where the tests have a case near it on
# each side, and the guards that the simpler forms lack.
REFUNDS_BY_INCREASE_ALONE = 'sum(increase(flight_bookings_refunds_total{outcome="failed"}[30m])) > 0'
DELIVERIES_BY_OFFSET = (
    'max(flight_bookings_notification_deliveries{state="failed"})'
    ' - max(flight_bookings_notification_deliveries{state="failed"} offset 1h) > 0'
)
MUTATIONS = [
    ("FlightBookingsScrapeFailing", "expr", "== 0", "== 2"),
    ("FlightBookingsScrapeFailing", "for", "5m", "1m"),
    ("FlightBookingsErrorsHigh", "expr", "> 0.02", "> 0.06"),  # 5% no longer fires.
    ("FlightBookingsErrorsHigh", "expr", "> 0.02", "> 0.005"),  # 1% fires.
    ("FlightBookingsErrorsHigh", "expr", "sum by (instance)", "sum"),
    ("FlightBookingsLatencyHigh", "expr", ") > 2", ") > 5"),
    ("FlightBookingsLatencyHigh", "expr", ") > 2", ") > 0.05"),
    ("FlightBookingsDependencyFailing", "expr", "> 0.1", "> 0.25"),
    ("FlightBookingsDependencyFailing", "expr", "> 0.1", "> 0.04"),
    ("FlightBookingsDependencyFailing", "expr", 'outcome!~"2xx|4xx"', 'outcome!~"2xx"'),  # 4xx as failures.
    ("FlightBookingsSeatLockTimeouts", "expr", "> 0.05", "> 0.07"),
    ("FlightBookingsSeatLockTimeouts", "expr", "> 0.05", "> 0.03"),
    ("FlightBookingsRefundsFailing", "expr", "[30m])) > 0", "[30m])) > 2"),
    # increase() alone misses a host's first failure since boot.
    ("FlightBookingsRefundsFailing", "expr", None, REFUNDS_BY_INCREASE_ALONE),
    # Without the guard a new Prometheus counts a host's old failures as new.
    ("FlightBookingsRefundsFailing", "expr", "and on (instance, job) (up offset 30m == 1)", ""),
    ("FlightBookingsDatabaseUnreadable", "expr", "min(", "max("),
    ("FlightBookingsCleanupNotRunning", "expr", "> 1500", "> 3600"),
    ("FlightBookingsCleanupNotRunning", "expr", "> 1500", "> 250"),  # 300 s fires.
    ("FlightBookingsCleanupFailing", "expr", "> 3600", "> 4000"),
    ("FlightBookingsCleanupFailing", "expr", "> 3600", "> 3200"),
    ("FlightBookingsCleanupFailing", "expr", "< 1500", "< 100"),
    ("FlightBookingsWorkerDown", "expr", "> 60", "> 300"),
    ("FlightBookingsWorkerDown", "expr", "> 60", "> 5"),
    ("FlightBookingsTaskQueueBehind", "expr", "> 300", "> 500"),
    ("FlightBookingsTaskQueueBehind", "expr", "> 300", "> 150"),
    ("FlightBookingsHoldsNotExpiring", "expr", "> 1200", "> 1400"),
    ("FlightBookingsHoldsNotExpiring", "expr", "> 1200", "> 900"),
    ("FlightBookingsHoldsNotExpiring", "expr", '{work="bookings_to_expire"}', ""),
    ("FlightBookingsMoneyWaiting", "expr", "> 1800", "> 2100"),
    ("FlightBookingsMoneyWaiting", "expr", "> 1800", "> 1600"),
    ("FlightBookingsMoneyWaiting", "expr", "max by (work)", "max"),
    ("FlightBookingsReleasesOwed", "expr", "> 1800", "> 2100"),
    ("FlightBookingsReleasesOwed", "expr", "> 1800", "> 1600"),
    ("FlightBookingsNeedsAPerson", "expr", "> 0", "> 2"),
    ("FlightBookingsNeedsAPerson", "expr", "> 0", ">= 0"),  # A count of 0 fires.
    ("FlightBookingsNeedsAPerson", "expr", "[6h]", "[1m]"),  # The rise is forgotten at once.
    ("FlightBookingsDeliveriesFailing", "expr", "> 0", "> 2"),
    ("FlightBookingsDeliveriesFailing", "expr", "[1h]", "[10m]"),
    # The same without min_over_time: says nothing while the series is absent an hour ago.
    ("FlightBookingsDeliveriesFailing", "expr", None, DELIVERIES_BY_OFFSET),
]


def test_every_alert_has_a_mutation():
    assert {alert for alert, *_ in MUTATIONS} == set(_alerts())


def _alone(alert: str, where: Path, change: tuple[str, str | None, str] | None = None) -> None:
    """Write into `where` the alert alone (changed: (field, text in it or None for all of it,
    replacement)), and the unit tests' evaluations of it alone."""
    [group] = _groups()
    [rule] = [rule for rule in group["rules"] if rule.get("alert") == alert]
    if change is not None:
        field, text, replacement = change
        if text is None:
            rule[field] = replacement
        else:
            assert text in rule[field], f"{alert}'s {field} no longer has {text!r}: update MUTATIONS"
            rule[field] = rule[field].replace(text, replacement)
    (where / "alerts.yml").write_text(yaml.safe_dump({"groups": [{**group, "rules": [rule]}]}, sort_keys=False))
    unit_tests = yaml.safe_load(ALERTS_TEST.read_text())
    unit_tests["tests"] = [
        {**test, "alert_rule_test": evaluations}
        for test in unit_tests["tests"]
        if (evaluations := [e for e in test.get("alert_rule_test", []) if e["alertname"] == alert])
    ]
    (where / ALERTS_TEST.name).write_text(yaml.safe_dump(unit_tests, sort_keys=False))


@pytest.mark.parametrize("alert", sorted(_alerts()))
def test_each_alert_passes_its_own_unit_tests_alone(promtool, tmp_path, alert):
    """What the mutations below start from: an alert's tests do not need the other alerts."""
    _alone(alert, tmp_path)

    result = run(promtool, "test", "rules", ALERTS_TEST.name, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("alert", "field", "text", "replacement"),
    MUTATIONS,
    ids=[f"{alert.removeprefix('FlightBookings')}-{index}" for index, (alert, *_) in enumerate(MUTATIONS)],
)
def test_a_wrong_alert_fails_its_unit_tests(promtool, tmp_path, alert, field, text, replacement):
    _alone(alert, tmp_path, (field, text, replacement))

    result = run(promtool, "test", "rules", ALERTS_TEST.name, cwd=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{alert} changed ({text!r} -> {replacement!r}) and its tests still pass"
    assert f"alertname: {alert}," in output, output
