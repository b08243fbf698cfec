"""The Grafana dashboard and the Prometheus alert rules in deploy/, checked without running
either: the JSON and YAML load, and every metric they read is one that something exports."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

# Imported for their side effect: each registers its metrics in prometheus_client's registry.
import stream.ops.action_metrics
import stream.ops.outcome_metrics
import stream.worker.metrics
import stream.worker.quality  # noqa: F401
from stream.settings import PROJECT_ROOT
from tests.support import dashboards

# What Triton 2.51 serves on its metrics port for a loaded model (with
# --metrics-config summary_latencies=true, as docker-compose.yml starts it), from Triton's
# user guide, docs/user_guide/metrics.md; tests/integration/test_metrics_endpoints.py checks
# the real tritonserver of the local stack serves the ones the dashboard reads.
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count",
    "nv_inference_request_summary_us",
    "nv_inference_queue_summary_us",
    "nv_inference_compute_input_summary_us",
    "nv_inference_compute_infer_summary_us",
    "nv_inference_compute_output_summary_us",
    "nv_cpu_utilization",
    "nv_cpu_memory_total_bytes",
    "nv_cpu_memory_used_bytes",
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
}
# Series Prometheus makes itself: scrape health, and the state of its alert rules.
PROMETHEUS_SERIES = {"up", "ALERTS"}

# The names each kind of metric is exposed under (prometheus_client drops _total from a
# counter's family name).
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def exported_names() -> set[str]:
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def test_the_name_reader_finds_series_and_nothing_else() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, stage) (rate(clickscore_window_stage_seconds_bucket"
        '{stage="score"}[$__rate_interval]))) / 1e6 > 0 and on (job) up{job="x"} == 0 '
        "or absent(ALERTS) unless deriv(sum by (topic) (clickscore_consumer_lag)[5m:30s]) > 0"
    )
    assert dashboards.metric_names(expr) == {
        "clickscore_window_stage_seconds_bucket",
        "up",
        "ALERTS",
        "clickscore_consumer_lag",
    }


def test_the_registry_holds_the_metrics_of_the_worker_and_of_actions() -> None:
    exported = exported_names()
    assert "clickscore_event_to_score_seconds_bucket" in exported
    assert "clickscore_actions_recorded_total" in exported


def test_every_metric_the_dashboard_and_rules_read_is_exported() -> None:
    known = exported_names() | TRITON_METRICS | PROMETHEUS_SERIES
    unknown = dashboards.used_metric_names() - known
    assert not unknown, f"read but exported by nothing: {sorted(unknown)}"


def test_the_dashboard_shows_what_the_people_on_call_need() -> None:
    used = set().union(*(dashboards.metric_names(e) for e in dashboards.dashboard_exprs()))
    assert {
        "clickscore_consumer_lag",  # lag
        "clickscore_events_consumed_total",  # events/s
        "clickscore_event_to_score_seconds_bucket",  # event-to-score latency
        "clickscore_dead_letters_total",  # dead letters by reason
        "clickscore_alerts_total",  # alerts by kind
        "clickscore_triton_latency_seconds_bucket",  # Triton latency, the workers' view
        "nv_inference_request_duration_us",  # Triton latency, the server's view
        "nv_inference_request_failure",  # Triton errors
        "clickscore_retries_total",  # retries by target
        "clickscore_actions_recorded_total",  # retention actions
        "clickscore_silent_rescore_delay_seconds_bucket",  # silent users: due -> re-scored
        "clickscore_silent_rescores_due",  # silent users: due, not re-scored yet
        "clickscore_churn_precision_realised",  # served quality: realised precision
        "clickscore_churn_precision_validation",  # ... against what the version promised
        "clickscore_churn_recall_realised",  # ... recall
        "clickscore_purchase_calibration_rate",  # ... calibration per decile
        "clickscore_score_psi",  # drift of each served score
        "clickscore_feature_psi",  # drift of the features
    } <= used
    exprs = "\n".join(dashboards.dashboard_exprs())
    assert "histogram_quantile(" in exprs


def test_the_dashboard_json_loads_and_every_panel_queries_the_provisioned_datasource() -> None:
    board = dashboards.dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    datasource = dashboards.load_yaml(dashboards.DATASOURCES)["datasources"][0]
    panels = dashboards.dashboard_panels()
    assert len(panels) >= 8
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert target["expr"].strip() and target["refId"]


def test_grafana_provisions_the_datasource_and_the_dashboard_folder() -> None:
    datasource = dashboards.load_yaml(dashboards.DATASOURCES)["datasources"]
    assert [d["type"] for d in datasource] == ["prometheus"]
    assert datasource[0]["url"] == "http://prometheus:9090"
    provider = dashboards.load_yaml(dashboards.DASHBOARD_PROVIDERS)["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]


ALERTS = {
    "ClickscoreConsumerLagGrowing",
    "ClickscoreDeadLettersHigh",
    "ClickscoreWorkerDown",
    "ClickscoreNoScores",
    "ClickscoreWorkerUnhealthy",
    "ClickscoreScoreDrift",
    "ClickscoreChurnPrecisionBelowPromise",
    "ClickscoreOutcomesStalled",
}


def test_the_alert_rules_are_complete_and_documented() -> None:
    rules = dashboards.alert_rules()
    assert {r["alert"] for r in rules} == ALERTS
    readme = (PROJECT_ROOT / "README.md").read_text()
    operating = readme.split("## Operating it", 1)[1].split("\n## ", 1)[0]
    for rule in rules:
        assert rule["expr"].strip() and re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert f"`{rule['alert']}`" in operating, f"README does not say what {rule['alert']} means"


@pytest.mark.parametrize(
    ("alert", "metric"),
    [
        ("ClickscoreConsumerLagGrowing", "clickscore_consumer_lag"),
        ("ClickscoreDeadLettersHigh", "clickscore_dead_letters_total"),
        ("ClickscoreWorkerDown", "up"),
        ("ClickscoreNoScores", "clickscore_scores_emitted_total"),
        ("ClickscoreWorkerUnhealthy", "clickscore_healthy"),
        ("ClickscoreScoreDrift", "clickscore_score_psi"),
        ("ClickscoreChurnPrecisionBelowPromise", "clickscore_churn_precision_realised"),
        ("ClickscoreChurnPrecisionBelowPromise", "clickscore_churn_precision_validation_interval"),
        ("ClickscoreOutcomesStalled", "clickscore_outcomes_last_recorded_timestamp_seconds"),
        ("ClickscoreOutcomesStalled", "clickscore_alerts_total"),
    ],
)
def test_each_rule_reads_its_signal(alert: str, metric: str) -> None:
    (rule,) = [r for r in dashboards.alert_rules() if r["alert"] == alert]
    assert metric in dashboards.metric_names(rule["expr"])


def test_prometheus_loads_the_rules_and_scrapes_the_jobs_the_rules_name() -> None:
    config = dashboards.load_yaml(dashboards.PROMETHEUS)
    # Relative to the config file, as Prometheus reads them.
    for path in config["rule_files"]:
        assert (dashboards.PROMETHEUS.parent / path).resolve() == dashboards.RULES
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    for rule in dashboards.alert_rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, rule["alert"]


def _promtool() -> str:
    """promtool from the venv (`make test` unpacks it there) or PATH; missing fails the run."""
    beside = Path(sys.executable).parent / "promtool"
    found = str(beside) if beside.is_file() else shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is missing: `make test` unpacks it into .venv/bin from Debian's "
            "prometheus package; elsewhere put Prometheus's promtool on PATH.",
            pytrace=False,
        )
    return found


def _promtool_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )


def test_promtool_accepts_the_prometheus_config_and_its_rules() -> None:
    done = _promtool_run(
        "check", "config", dashboards.PROMETHEUS.name, cwd=dashboards.DEPLOY / "prometheus"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def test_the_alert_rules_fire_on_their_signal_and_stay_quiet_short_of_it() -> None:
    """deploy/prometheus/alerts.test.yml: promtool's rule unit tests, series in, alerts out."""
    done = _promtool_run("test", "rules", "alerts.test.yml", cwd=dashboards.DEPLOY / "prometheus")
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {
        t["alertname"]
        for c in dashboards.load_yaml(dashboards.RULES_TESTS)["tests"]
        for t in c["alert_rule_test"]
    }
    assert tested == ALERTS


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # Grafana fills in $__rate_interval; any range stands in for it here.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "1m")}
                    for i, e in enumerate(dashboards.dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = _promtool_run("check", "rules", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_silent_user_panels_read_the_delay_and_the_due_count(tmp_path: Path) -> None:
    """promtool evaluates the Silent users panels' queries on series as two workers export
    them: 60 re-scores a minute, all between 30 and 60 s after they fell due, and 3 + 4
    users still due."""
    panels = {p["title"]: p for p in dashboards.dashboard_panels()}
    exprs = {
        t["legendFormat"]: t["expr"].replace("$__rate_interval", "5m")
        for title in ("Silent re-score delay", "Silent users due and re-scored")
        for t in panels[title]["targets"]
    }
    delay = "clickscore_silent_rescore_delay_seconds_bucket"
    series = [
        {"series": f'{delay}{{instance="a", le="{le}"}}', "values": values}
        for le, values in (("10", "0x10"), ("30", "0x10"), ("60", "0+60x10"), ("+Inf", "0+60x10"))
    ]
    series += [
        {"series": 'clickscore_silent_rescores_due{instance="a"}', "values": "3x10"},
        {"series": 'clickscore_silent_rescores_due{instance="b"}', "values": "4x10"},
        {"series": 'clickscore_silent_rescored_total{instance="a"}', "values": "0+60x10"},
    ]
    expected = {"p50": 45.0, "p99": 59.7, "still due": 7.0, "re-scored per minute": 60.0}
    assert set(exprs) == set(expected)
    tests = {
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": exprs[name],
                        "eval_time": "10m",
                        "exp_samples": [{"labels": "{}", "value": value}],
                    }
                    for name, value in expected.items()
                ],
            }
        ],
    }
    path = tmp_path / "silent-panels.test.yml"
    path.write_text(yaml.safe_dump(tests))
    done = _promtool_run("test", "rules", path.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


QUALITY_PANELS = (
    "Churn alert precision: realised and promised",
    "Churn alert recall and outcomes known",
    "Purchase calibration by score decile",
    "Score drift (PSI)",
    "Feature drift (PSI), top 5",
)


def test_the_served_quality_panels_read_the_realised_figures_and_the_drift(
    tmp_path: Path,
) -> None:
    """promtool evaluates every query of the Served quality row on series as the outcomes
    job and two workers export them: realised 0.50 against a promise of 0.60 +- 0.07, drift
    0.30 on one worker and 0.10 on the other (the panel shows the higher), six features of
    which the panel keeps the five that moved most."""
    panels = {p["title"]: p for p in dashboards.dashboard_panels()}
    outcomes = 'job="clickscore-outcomes",instance="o"'
    series = [
        (f'clickscore_churn_precision_realised{{{outcomes},version="6",group="untreated"}}', "0.5"),
        (f'clickscore_churn_precision_realised{{{outcomes},version="6",group="treated"}}', "0.3"),
        (f'clickscore_churn_precision_validation{{{outcomes},version="6"}}', "0.6"),
        (f'clickscore_churn_precision_validation_interval{{{outcomes},version="6"}}', "0.07"),
        (f'clickscore_churn_recall_realised{{{outcomes},version="6"}}', "0.4"),
        (f'clickscore_churn_outcomes_known{{{outcomes},version="6",group="untreated"}}', "30"),
        (f'clickscore_churn_outcomes_known{{{outcomes},version="6",group="treated"}}', "4"),
        (f'clickscore_purchase_calibration_rate{{{outcomes},version="6",decile="9"}}', "0.8"),
        (f'clickscore_purchase_calibration_score{{{outcomes},version="6",decile="9"}}', "0.92"),
        ('clickscore_score_psi{instance="a",version="6",score="churn_risk"}', "0.3"),
        ('clickscore_score_psi{instance="b",version="6",score="churn_risk"}', "0.1"),
    ]
    features = ("log_events", "log_spend", "has_purchased", "log_events_1d", "log_carts_1d")
    for value, name in enumerate(("view_share_kept", *features)):
        series.append(
            (f'clickscore_feature_psi{{instance="a",version="6",feature="{name}"}}', f"0.0{value}")
        )
    expected: dict[tuple[str, str], list[tuple[str, float]]] = {
        (QUALITY_PANELS[0], "A"): [('{version="6"}', 0.5)],
        (QUALITY_PANELS[0], "B"): [('{version="6"}', 0.6)],
        (QUALITY_PANELS[0], "C"): [('{version="6"}', 0.53)],
        (QUALITY_PANELS[0], "D"): [('{version="6"}', 0.3)],
        (QUALITY_PANELS[1], "A"): [('{version="6"}', 0.4)],
        (QUALITY_PANELS[1], "B"): [
            ('{group="treated", version="6"}', 4.0),
            ('{group="untreated", version="6"}', 30.0),
        ],
        (QUALITY_PANELS[2], "A"): [('{decile="9", version="6"}', 0.8)],
        (QUALITY_PANELS[2], "B"): [('{decile="9", version="6"}', 0.92)],
        (QUALITY_PANELS[3], "A"): [('{score="churn_risk", version="6"}', 0.3)],
        (QUALITY_PANELS[4], "A"): [
            (f'{{feature="{name}", version="6"}}', (n + 1) / 100) for n, name in enumerate(features)
        ],
    }
    queries = {
        (title, t["refId"]): t["expr"] for title in QUALITY_PANELS for t in panels[title]["targets"]
    }
    assert set(queries) == set(expected)
    tests = {
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": f"{v}x10"} for s, v in series],
                "promql_expr_test": [
                    {
                        "expr": queries[key],
                        "eval_time": "5m",
                        "exp_samples": [
                            {"labels": labels, "value": value} for labels, value in samples
                        ],
                    }
                    for key, samples in expected.items()
                ],
            }
        ],
    }
    path = tmp_path / "quality-panels.test.yml"
    path.write_text(yaml.safe_dump(tests))
    done = _promtool_run("test", "rules", path.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
