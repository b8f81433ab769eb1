"""deploy/: the overlays build, validate strictly offline, and use only metric names the
code registers."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from core.config import load_config
from services.metrics import (
    ActorMetrics,
    CreditMetrics,
    LearnerMetrics,
    ReplayMetrics,
    WeightsMetrics,
)

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["local", "gpu"]
CRD_KINDS = {"PodMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}
METRIC = re.compile(r"\bhsd_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\{[^}]*\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\([^)]*\)")  # labels (hsd_run, le), not metrics


def _build(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot run `kubectl kustomize` (apt-get install kubectl)")
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _exported_names() -> set[str]:
    """Every sample name the learner's and the actors' registries expose."""
    names = set()
    for role in ((ActorMetrics,), (ReplayMetrics, LearnerMetrics, CreditMetrics, WeightsMetrics)):
        registry = CollectorRegistry()
        for cls in role:
            cls(registry)
        for family in registry.collect():
            names.update(s.name for s in family.samples)
            names.add(family.name)
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_validates_strictly(overlay):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = _build(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap", "Secret",
            "PodMonitor", "PrometheusRule"} <= kinds
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # no upstream schema; checked below
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    for doc in docs:
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            res = container.get("resources", {})
            assert res.get("requests") and res.get("limits"), f"{doc['metadata']['name']} has no requests/limits"
    # strict mode is really on: an unknown field fails
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


def test_gpu_overlay_requests_gpus_and_local_does_not():
    def gpus(docs):
        return {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
                .get("nvidia.com/gpu") for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                and d["metadata"]["name"] != "hsd-redis"}

    assert gpus(_build("gpu")) == {"hsd-actor": "1", "hsd-learner": "2"}
    assert set(gpus(_build("local")).values()) == {None}


def test_gpu_pods_get_gpu_nodes_the_model_volume_shared_memory_and_a_torchrun_learner():
    docs = _build("gpu")
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs
            if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] != "hsd-redis"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for name, pod in pods.items():
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["tolerations"], name
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory", name
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] in claims, name
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["HF_HOME"]["value"].startswith("/models/") and env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"]
        assert {"/dev/shm", "/models"} <= {m["mountPath"] for m in container["volumeMounts"]}, name
    learner = pods["hsd-learner"]["containers"][0]
    gpus = int(learner["resources"]["limits"]["nvidia.com/gpu"])
    assert learner["command"][:4] == ["torchrun", "--standalone", "--nproc_per_node", str(gpus)]
    config = load_config(ROOT / "deploy" / "k8s" / "overlays" / "gpu" / "hsd.toml", environ={})
    assert config.learner.engine == "deepspeed" and config.learner.processes == gpus


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_config_is_valid_and_the_autoscaler_reads_its_run_s_stream(overlay):
    own = ROOT / "deploy" / "k8s" / "overlays" / overlay / "hsd.toml"
    config = load_config(own if own.exists() else ROOT / "deploy" / "k8s" / "base" / "hsd.toml", environ={})
    docs = _build(overlay)
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        assert so["spec"]["triggers"][0]["metadata"]["stream"] == f"hsd:{config.run.name}:prompts"
        # KEDA's operator dials Redis from its own namespace: the address names the run's
        redis = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "hsd-redis")
        namespace = redis["metadata"]["namespace"]
        assert so["spec"]["triggers"][0]["metadata"]["address"] == f"hsd-redis.{namespace}.svc.cluster.local:6379"
        redis_policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "hsd-redis")
        assert any(f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "keda"
                   for rule in redis_policy["spec"]["ingress"] for f in rule["from"]), "KEDA cannot reach Redis"
    # every pod carries the run's name, which Prometheus copies into the dashboard's run label
    templates = [d["spec"]["template"] for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
    assert templates and all(t["metadata"]["labels"]["hsd-run"] == config.run.name for t in templates)
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    assert monitor["spec"]["podTargetLabels"] == ["hsd-run"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_learner_ports_actors_dial_are_served_and_allowed(overlay):
    docs = _build(overlay)
    learner = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "hsd-learner")
    env = {e["name"]: e.get("value") for e in learner["spec"]["template"]["spec"]["containers"][0]["env"]}
    dialed = {int(env["HSD_WEIGHTS__PORT"]), int(env["HSD_WEIGHTS__BULK_PORT"])}
    assert env["HSD_WEIGHTS__ADVERTISE"].endswith(f":{env['HSD_WEIGHTS__PORT']}")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "hsd-learner")
    assert dialed <= {p["port"] for p in service["spec"]["ports"]}
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "hsd-learner")
    from_actors = next(rule for rule in policy["spec"]["ingress"]
                       if any(f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                              == "actor" for f in rule["from"]))
    assert dialed <= {p["port"] for p in from_actors["ports"]}


def test_autoscalers_target_the_actors_with_bounds_and_slow_scale_down():
    keda = {d["kind"]: d for d in _build("gpu")}
    so = keda["ScaledObject"]["spec"]
    assert so["scaleTargetRef"]["name"] == "hsd-actor" and so["minReplicaCount"] >= 1 < so["maxReplicaCount"]
    trigger = so["triggers"][0]
    assert trigger["type"] == "redis-streams" and trigger["metadata"]["consumerGroup"] == "actors"
    assert trigger["metadata"]["stream"].endswith(":prompts")
    assert so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    hpa = {d["kind"]: d for d in _build("local")}["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "hsd-actor" and hpa["minReplicas"] >= 1 < hpa["maxReplicas"]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0


def _rules(docs) -> dict:
    return next(d for d in docs if d["kind"] == "PrometheusRule")["spec"]


def test_every_metric_name_in_dashboards_alerts_and_autoscalers_is_exported():
    exported = _exported_names()
    used: dict[str, set[str]] = {}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "hsd-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    # a name inside {...} is a label (hsd_run), not a metric
    used["dashboard"] = {m for p in panels for t in p["targets"]
                         for m in METRIC.findall(GROUPING.sub("", SELECTOR.sub("", t["expr"])))}
    docs = _build("local")
    used["alerts"] = {m for g in _rules(docs)["groups"] for r in g["rules"]
                      for m in METRIC.findall(GROUPING.sub("", SELECTOR.sub("", r["expr"])))}
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    used["hpa"] = {m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    for where, names in used.items():
        assert names, f"no metric names found in the {where}"
        assert names <= exported, f"{where} uses metrics the code does not export: {sorted(names - exported)}"
    alerts = {r["alert"] for g in _rules(docs)["groups"] for r in g["rules"]}
    assert alerts == {"HsdLearnerStalled", "HsdStaleDropsRising", "HsdDeadLetters", "HsdNoActorsReady",
                      "HsdWeightSyncSlow", "HsdRewardCollapse", "HsdHeldOutAccuracyRegressed", "HsdCheckpointOld",
                      "HsdVerifierFailing", "HsdResponsesTruncated", "HsdNoOutcomeSignal"}


def test_every_dashboard_panel_has_units_and_is_scoped_to_the_chosen_runs():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "hsd-dashboard.json").read_text())
    assert "run" in {v["name"] for v in dashboard["templating"]["list"]}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = [p["title"] for p in panels]
    for health in ("Held-out accuracy", "Rewards", "Gradient norm (before clipping)", "Policy entropy",
                   "Response length"):
        assert health in titles
    for p in panels:
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']}: no unit"
        refs = {t["refId"] for t in p["targets"]}
        for o in p["fieldConfig"]["overrides"]:  # a series of another unit: its own unit and axis
            assert o["matcher"]["options"] in refs and {x["id"] for x in o["properties"]} == {"unit", "custom.axisPlacement"}
        for t in p["targets"]:
            selectors = re.findall(r"\bhsd_[a-z0-9_]+(\{[^}]*\})?", t["expr"])
            assert selectors and all('hsd_run=~"$run"' in s for s in selectors), f"{p['title']}: {t['expr']}"


def _aggregations(node) -> list:
    """Every aggregation (sum, max, avg …) in a parsed PromQL expression."""
    import promql_parser

    found = [node] if isinstance(node, promql_parser.AggregateExpr) else []
    for child in ("lhs", "rhs", "expr", "param", "args"):
        value = getattr(node, child, None)
        for sub in value if isinstance(value, list) else [value]:
            if sub is not None and hasattr(sub, "prettify"):
                found += _aggregations(sub)
    return found


def test_every_alert_and_panel_parses_and_every_alert_is_per_run():
    """Without promtool: PromQL's own grammar (promql-parser, the Rust parser) reads every
    expression, and every aggregation in an alert keeps hsd_run, so that one run's alert
    names that run and two runs never sum into one."""
    promql_parser = pytest.importorskip("promql_parser")
    rules = [r for g in _rules(_build("local"))["groups"] for r in g["rules"]]
    for rule in rules:
        aggregations = _aggregations(promql_parser.parse(rule["expr"]))
        assert aggregations, f"{rule['alert']}: no aggregation by run"
        for a in aggregations:
            assert a.modifier is not None and "hsd_run" in a.modifier.labels, f"{rule['alert']}: {a.prettify()}"
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "hsd-dashboard.json").read_text())
    for panel in (p for p in dashboard["panels"] if p["type"] != "row"):
        for target in panel["targets"]:
            promql_parser.parse(target["expr"].replace("$run", "x"))


def test_alert_rules_pass_promtool(tmp_path):
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian's `prometheus` package ships it)")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(_rules(_build("local"))))
    out = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 11 rules found" in out.stdout


def _final_stage(dockerfile: Path) -> str:
    return dockerfile.read_text().rsplit("\nFROM ", 1)[1]


def test_the_cuda_image_can_compile_what_triton_builds_at_first_use():
    """vLLM and learner.compile run Triton, which compiles a small C module with the
    system's compiler against Python's headers the first time: the image that runs must
    hold both (a CUDA runtime base has neither)."""
    final = _final_stage(ROOT / "deploy" / "docker" / "Dockerfile.cuda")
    packages = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", final.split("apt-get install", 1)[1].split("&&", 1)[0]))
    assert {"gcc", "python3-dev", "libc6-dev"} <= packages, final


def _overlay_config(overlay: str):
    own = ROOT / "deploy" / "k8s" / "overlays" / overlay / "hsd.toml"
    return load_config(own if own.exists() else ROOT / "deploy" / "k8s" / "base" / "hsd.toml", environ={})


def _autoscaler(docs) -> tuple[float, int, int]:
    """(work per replica, min, max) of the overlay's KEDA trigger or HPA: both scale on the
    prompt stream's XLEN (KEDA's streamLength; the HPA's hsd_queue_lag_entries{stream="prompts"})."""
    kinds = {d["kind"]: d["spec"] for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")}
    if "ScaledObject" in kinds:
        so = kinds["ScaledObject"]
        metadata = so["triggers"][0]["metadata"]
        assert "pendingEntriesCount" not in metadata  # capped by the fleet itself: it converges to one actor
        return float(metadata["streamLength"]), so["minReplicaCount"], so["maxReplicaCount"]
    hpa = kinds["HorizontalPodAutoscaler"]
    (metric,) = hpa["metrics"]
    assert metric["external"]["metric"]["name"] == "hsd_queue_lag_entries"
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"stream": "prompts"}
    return float(metric["external"]["target"]["averageValue"]), hpa["minReplicas"], hpa["maxReplicas"]


def _replicas(stream_length: int, per_replica: float, low: int, high: int) -> int:
    """What the HPA (which KEDA drives too) asks for on an AverageValue target."""
    return min(high, max(low, math.ceil(stream_length / per_replica)))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_reaches_n_actors_for_n_batches_of_work_and_admission_can_feed_them(overlay):
    from learner.service import admission_capacity

    config = _overlay_config(overlay)
    per_replica, low, high = _autoscaler(_build(overlay))
    batch = config.actor.prompts_per_batch
    assert per_replica == batch  # one actor per batch of waiting or running prompts
    for n in range(1, high + 1):
        assert _replicas(n * batch, per_replica, low, high) == n  # XLEN counts taken, unanswered prompts too
    # the work the learner lets be in flight feeds the largest fleet the autoscaler allows
    assert admission_capacity(config) >= high * batch, (admission_capacity(config), high, batch)
    bigger = load_config(environ={}, overrides=["learner.admission_groups=96"])
    assert admission_capacity(bigger) == 96  # a larger fleet: raise admission (more groups go stale)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_slow_starts_get_a_startup_probe_and_the_held_out_panel_has_data(overlay):
    """A model that takes minutes to load must not be killed for it, nor a hung process be
    left alone for ten minutes: a startup probe, then a liveness probe without a long delay."""
    docs = _build(overlay)
    for kind, name in (("StatefulSet", "hsd-learner"), ("Deployment", "hsd-actor")):
        (container,) = [c for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
                        for c in d["spec"]["template"]["spec"]["containers"]]
        startup, liveness = container["startupProbe"], container["livenessProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200, name
        assert liveness.get("initialDelaySeconds", 0) <= 60, name
    config = _overlay_config(overlay)
    assert config.learner.eval_every > 0  # the held-out accuracy panel and HsdHeldOutAccuracyRegressed read it
