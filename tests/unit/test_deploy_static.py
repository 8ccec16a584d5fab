"""Static checks of the deployment files: docker-compose.yml, Dockerfile, .dockerignore,
Prometheus config and alert rules, Grafana provisioning and dashboard.

Nothing here runs a container: these tests read the files and compare them with the code
(stream/settings.py for environment variables, stream/metrics.py for metric names), so a
renamed setting or metric breaks the build instead of a deployment.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest
import yaml

from tests.support.helpers import REPO

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "interest-stream.json"
GRAFANA_DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"

WORKERS = ("worker-1", "worker-2")
LONG_RUNNING = ("kafka", *WORKERS, "tfserving", "prometheus", "grafana")
ONE_SHOT = ("topics", "train", "replay")
BUILD_TOOLS = (
    "build-essential",
    "gcc",
    "g++",
    "clang",
    "make",
    "cmake",
    "pkg-config",
    "python3-dev",
    "libc6-dev",
)

# --------------------------------------------------------------------------- helpers
# (also used by tests/integration/test_prometheus_scrape.py, which loads this file by path)

_PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels excluded)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers, incl. Grafana $variables
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges, subqueries, $__rate_interval
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[\w$]+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", s):
        if m.group(1).lower() not in _PROMQL_KEYWORDS:
            names.add(m.group(1))
    return names


def series_names_for(kind: str, name: str) -> set[str]:
    """Series names Prometheus stores for one metric family as prometheus-client exposes it."""
    if kind == "counter":
        base = name.removesuffix("_total")
        return {base + "_total"}
    if kind == "histogram":
        return {name + "_bucket", name + "_sum", name + "_count"}
    if kind == "summary":
        return {name, name + "_sum", name + "_count"}
    return {name}


def defined_series_names() -> set[str]:
    """Every series name the worker can export (stream/metrics.py) plus Prometheus' ``up``."""
    from stream.worker.metrics import REGISTRY

    names = {"up"}
    for family in REGISTRY.collect():
        names |= series_names_for(family.type, family.name)
    return names


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in _panels(dash):
        exprs += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and query:
            # label_values(<selector>, label): check the selector
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
            exprs.append(m.group(1) if m else query)
    return exprs


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash.get("panels", []):
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows
    return out


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _split_volume(vol: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume; the source may be ${VAR:-default}."""
    m = re.match(r"(\$\{[^}]*\}[^:]*|[^:]*):([^:]+)", vol)
    assert m, f"cannot parse volume {vol!r}"
    return m.group(1), m.group(2)


def _dockerfile_stages() -> list[list[str]]:
    """Instructions of each stage (continuation lines joined, comments dropped)."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or (stripped.startswith("#") and not current):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


# --------------------------------------------------------------------------- PromQL parser


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up == 0", {"up"}),
        ('up{job="interest-worker"} == 0', {"up"}),
        ("sum by (type) (rate(interest_events_total[5m]))", {"interest_events_total"}),
        (
            'histogram_quantile(0.99, sum by (le) (rate(x_bucket{a=~"$i"}[$__rate_interval])))',
            {"x_bucket"},
        ),
        (
            "sum(rate(a_total[5m])) / (sum(rate(b_total[5m])) or vector(0)) > 1e-9",
            {"a_total", "b_total"},
        ),
        ("max(a) by (topic) and on (topic) b offset 5m > bool 3", {"a", "b"}),
        (
            'rate(typo_metric_total[1m]) + label_replace(c, "x", "$1", "y", "(.*)")',
            {"typo_metric_total", "c"},
        ),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_defined_series_names_follow_prometheus_client_suffixes() -> None:
    names = defined_series_names()
    assert "interest_events_total" in names
    assert "interest_event_to_recommendation_seconds_bucket" in names
    assert "interest_event_to_recommendation_seconds" not in names  # not a stored series
    assert "interest_users" in names
    assert "interest_consumer_lag" in names


# --------------------------------------------------------------------------- compose


def test_required_services_exist(services: dict[str, Any]) -> None:
    required = {
        "kafka",
        "topics",
        "train",
        *WORKERS,
        "tfserving",
        "prometheus",
        "grafana",
        "replay",
    }
    assert required <= set(services), f"missing services: {sorted(required - set(services))}"


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name}: no image (services that build still name a pinned tag)"
        assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1], f"{name}: untagged {image}"
        tag = image.rsplit(":", 1)[-1]
        assert tag not in ("latest", "") and "${" not in image, f"{name}: unpinned {image}"


def test_kafka_is_apache_kraft_4x_with_healthcheck(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "healthcheck" in kafka


def test_two_workers_share_one_consumer_group(services: dict[str, Any]) -> None:
    envs = [_env(services[w]) for w in WORKERS]
    app_ids = {env.get("INTEREST_APP_ID") for env in envs}
    assert len(app_ids) == 1 and None not in app_ids, f"workers' INTEREST_APP_ID differ: {app_ids}"
    for name in WORKERS:
        svc = services[name]
        assert svc.get("command", ["worker"])[0] == "worker"
        env = _env(svc)
        assert env["INTEREST_WEB_HOST"] == "0.0.0.0", (
            f"{name}: web port not reachable by Prometheus"
        )
        assert env["INTEREST_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["INTEREST_SCORER"] == "tfserving"
        assert env["INTEREST_TFSERVING_URL"].startswith("http://tfserving:")
    # each worker keeps its own RocksDB state on its own volume, and its own host port
    state = [
        {s for s, t in map(_split_volume, services[w]["volumes"]) if t == "/var/lib/interest"}
        for w in WORKERS
    ]
    assert all(len(s) == 1 for s in state) and state[0] != state[1]
    ports = [p.split(":")[0] for w in WORKERS for p in services[w].get("ports", [])]
    assert len(ports) == len(set(ports))


def test_workers_and_tfserving_wait_for_the_training_job(services: dict[str, Any]) -> None:
    for name in (*WORKERS, "tfserving"):
        deps = services[name]["depends_on"]
        assert deps["train"]["condition"] == "service_completed_successfully", name
    for name in WORKERS:
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["topics"]["condition"] == (
            "service_completed_successfully"
        )
    assert "train" in " ".join(map(str, services["train"]["command"]))


def test_tfserving_has_a_gpu_and_serves_the_model_config(services: dict[str, Any]) -> None:
    tfs = services["tfserving"]
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+-gpu", tfs["image"])
    devices = tfs["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    args = " ".join(tfs["command"])
    for flag in (
        "--rest_api_port=8501",
        "--model_config_file=/etc/tfserving/models.config",
        "--enable_batching",
        "--batching_parameters_file=/etc/tfserving/batching_parameters.txt",
    ):
        assert flag in args, flag
    mounts = {t: s for s, t in map(_split_volume, tfs["volumes"])}
    assert mounts["/models"] == "models"
    assert mounts["/etc/tfserving/models.config"] == "./deploy/tfserving/models.config"
    assert mounts["/etc/tfserving/batching_parameters.txt"] == (
        "./deploy/tfserving/batching_parameters.txt"
    )


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for svc in services.values():
        for vol in svc.get("volumes", []):
            source = _split_volume(vol)[0] if isinstance(vol, str) else vol.get("source", "")
            if source and not source.startswith((".", "/", "~", "$")):
                used.add(source)
    assert used <= declared, f"undeclared volumes: {sorted(used - declared)}"
    assert {"kafka-data", "worker-1-state", "worker-2-state", "models"} <= declared
    kafka_mounts = services["kafka"]["volumes"]
    assert any(v.startswith("kafka-data:") for v in kafka_mounts)


def test_healthchecks_and_restart_policies(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        svc = services[name]
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), name
    for name in ONE_SHOT:
        assert services[name].get("restart") == "no", f"{name}: one-shot must not restart"
    assert services["replay"].get("profiles") == ["replay"]


def test_interest_env_vars_are_real_settings(services: dict[str, Any]) -> None:
    from stream.config import ENV_PREFIX, Settings

    known = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    used: dict[str, str] = {}
    for name, svc in services.items():
        for var in _env(svc):
            if var.startswith(ENV_PREFIX):
                used[var] = name
    for line in _dockerfile_stages()[-1]:
        if line.upper().startswith("ENV "):
            used.update(dict.fromkeys(re.findall(r"\b(INTEREST_\w+)=", line), "Dockerfile"))
    assert used, "no INTEREST_* variables found"
    unknown = {var: where for var, where in used.items() if var not in known}
    assert not unknown, f"not settings in stream/settings.py: {unknown}"


def test_mounted_host_paths_exist(services: dict[str, Any]) -> None:
    checked = 0
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source, _ = _split_volume(vol)
            if source.startswith("${"):
                # user-supplied directory: must have a repo-relative default
                assert ":-./" in source, f"{name}: {source} needs a ./ default"
                continue
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source} does not exist in the repo"
                checked += 1
    assert checked >= 6


def test_prometheus_scrapes_every_worker_service(services: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for sc in jobs["interest-worker"]["static_configs"] for t in sc["targets"]}
    expected = {f"{w}:{_env(services[w])['INTEREST_WEB_PORT']}" for w in WORKERS}
    assert targets == expected
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert any(v.startswith("prometheus-data:") for v in mounts)


def test_replay_producer_runs_interest_produce(services: dict[str, Any]) -> None:
    replay = services["replay"]
    assert replay["command"][0] == "produce"
    assert replay["image"] == services["worker-1"]["image"]


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multi_stage_with_pinned_slim_bases() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "builder + runtime stages expected"
    for stage in stages:
        image = shlex.split(stage[0])[1]
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image
    assert " AS " in stages[0][0].upper()


def test_dockerfile_final_stage_is_non_root_without_build_tools() -> None:
    final = _dockerfile_stages()[-1]
    users = [shlex.split(line)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "final stage has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    for line in final:
        if line.upper().startswith("RUN "):
            words = set(re.split(r"[\s;&|]+", line))
            assert not words & set(BUILD_TOOLS), f"build tools in the final stage: {line}"
    text = "\n".join(final)
    assert "COPY --from=builder" in text or "from=builder" in text


def test_dockerfile_entrypoint_healthcheck_and_port() -> None:
    final = _dockerfile_stages()[-1]
    by_word: dict[str, list[str]] = {}
    for line in final:
        word, _, rest = line.partition(" ")
        by_word.setdefault(word.upper(), []).append(rest.strip())
    assert json.loads(by_word["ENTRYPOINT"][-1]) == ["interest"]
    assert json.loads(by_word["CMD"][-1]) == ["worker"]
    assert "6066" in by_word["EXPOSE"][-1].split()
    health = by_word["HEALTHCHECK"][-1]
    assert "/health" in health and "urllib" in health and "curl" not in health


def test_dockerignore_keeps_the_context_small() -> None:
    entries = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    if entries[0] == "*":  # allow-list style
        allowed = {e[1:].rstrip("/") for e in entries if e.startswith("!")}
        assert {"pyproject.toml", "stream", "models"} <= allowed
        assert not allowed & {".venv", ".git", "data", "tests"}
    else:
        assert {".venv", ".git"} <= {e.strip("/") for e in entries}


# --------------------------------------------------------------------------- Grafana


def test_grafana_provisioning_matches_compose(services: dict[str, Any]) -> None:
    ds = yaml.safe_load(GRAFANA_DATASOURCES.read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(GRAFANA_DASHBOARDS.read_text())["providers"]
    path = providers[0]["options"]["path"]
    mounts = {t: s for s, t in map(_split_volume, services["grafana"]["volumes"])}
    assert mounts[path] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    uid = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"][0]["uid"]
    assert dash["uid"] and dash["title"]
    panels = [p for p in _panels(dash) if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]


def test_dashboard_covers_the_contract_metrics() -> None:
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    for name in (
        "interest_events_total",
        "interest_events_rejected_total",
        "interest_events_duplicate_total",
        "interest_event_to_recommendation_seconds_bucket",
        "interest_rescore_batch_size_bucket",
        "interest_rescore_seconds_bucket",
        "interest_recommendations_published_total",
        "interest_scorer_errors_total",
        "interest_users",
        "interest_dirty_users",
        "interest_consumer_lag",
        "interest_model_info",
    ):
        assert name in used, f"no dashboard panel shows {name}"
    latency = [e for e in dashboard_exprs() if "event_to_recommendation" in e]
    assert {q for e in latency for q in re.findall(r"histogram_quantile\(([\d.]+)", e)} >= {
        "0.5",
        "0.95",
        "0.99",
    }


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_promql_uses_only_metrics_defined_in_stream_metrics(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else [r["expr"] for r in alert_rules()]
    assert exprs
    defined = defined_series_names()
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - defined
        assert not unknown, f"{source}: {sorted(unknown)} not defined in stream/metrics.py: {expr}"
