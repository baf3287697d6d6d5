"""Policy checks on the rendered overlays: what a platform team's admission policies and reviewers would
look for, so that a manifest change that breaks one fails CI rather than a rollout.

The overlays are rendered by deploy/validate.sh into FOLLOWUP_RENDERED (one <overlay>.yaml each); run
alone, the tests render them with the kubectl on PATH.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent
REPO = DEPLOY.parent
OVERLAYS = sorted(p.name for p in (DEPLOY / "kustomize" / "overlays").iterdir() if p.is_dir())

SERVICES = {
    # name: (gRPC port, admin port, public HTTP port or None)
    "plans": (50051, 9091, 8081),
    "cases": (50052, 9092, None),
    "engagement": (50053, 9093, 8080),
    "scheduler": (50054, 9094, None),
    "notifications": (50055, 9095, 8082),
}
AUTOSCALED = {"engagement", "scheduler", "notifications"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# Env names whose values are secrets: they must come from a Secret, never a literal or a ConfigMap.
# A path to a credentials file or folder (NATS_CREDENTIALS_FILE/_DIR) is not itself a secret.
SECRET_NAME = re.compile(r"(DATABASE_URL|PASSWORD|SECRET|TOKEN|PRIVATE|SIGNING_KEY|CREDENTIALS(?!_(FILE|DIR)$)|API_KEY)")
SECRET_VALUE = re.compile(r"(BEGIN [A-Z ]*PRIVATE KEY|postgres(ql)?://[^/\s:@]+:[^@\s]+@)")


def render(overlay: str) -> list[dict]:
    rendered = os.environ.get("FOLLOWUP_RENDERED")
    if rendered:
        text = (Path(rendered) / f"{overlay}.yaml").read_text()
    else:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("kubectl is not on PATH (deploy/validate.sh installs one)")
        text = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / "kustomize" / "overlays" / overlay)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(request.param)


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs):
    for doc in docs:
        if doc["kind"] in POD_KINDS:
            yield f'{doc["kind"]}/{doc["metadata"]["name"]}', doc, doc["spec"]["template"]["spec"]


def containers(spec):
    return spec.get("initContainers", []) + spec.get("containers", [])


def labels_match(selector: dict, labels: dict) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and present and value in expr["values"]:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def test_every_container_is_locked_down(overlay):
    name, docs = overlay
    checked = 0
    for what, _doc, spec in pod_specs(docs):
        pod = spec.get("securityContext", {})
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), what
        assert spec.get("automountServiceAccountToken") is False, f"{what}: mounts an API token it never uses"
        assert spec.get("serviceAccountName") not in (None, "default"), f"{what}: runs as the default account"
        for c in containers(spec):
            where = f"{name}: {what} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") in (None, False), where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert (sc.get("runAsNonRoot", pod.get("runAsNonRoot"))) is True, where
            uid = sc.get("runAsUser", pod.get("runAsUser"))
            assert uid is not None and uid != 0, f"{where}: needs an explicit non-root uid"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            resources = c.get("resources", {})
            for key in ("cpu", "memory"):
                assert key in resources.get("requests", {}), f"{where}: no {key} request"
            assert "memory" in resources.get("limits", {}), f"{where}: no memory limit"
            checked += 1
    assert checked >= 2 * len(SERVICES), "the services' Deployments and migration Jobs are missing"


def test_every_deployment_probes_its_admin_port(overlay):
    name, docs = overlay
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == set(SERVICES), f"{name}: one Deployment per service"
    for svc, dep in deployments.items():
        spec = dep["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        admin = SERVICES[svc][1]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["admin"] == admin and ports["grpc"] == SERVICES[svc][0], svc
        if SERVICES[svc][2]:
            assert ports["http"] == SERVICES[svc][2], svc
        expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
        for probe, path in expected.items():
            get = c.get(probe, {}).get("httpGet")
            assert get is not None, f"{name}: {svc} has no {probe} over HTTP"
            assert get["path"] == path, f"{name}: {svc} {probe} asks {get['path']}"
            assert get["port"] in ("admin", admin), f"{name}: {svc} {probe} is not on the admin port"
        annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", svc
        assert annotations.get("prometheus.io/port") == str(admin), svc
        assert c["command"] == [f"followup-{svc}", "serve"], svc
        grace = spec["terminationGracePeriodSeconds"]
        assert grace > 5 + 2 * 20, f"{svc}: SIGTERM grace shorter than preStop + drain + relay flush"


def test_services_name_their_ports_with_app_protocols(overlay):
    _, docs = overlay
    services = by_kind(docs, "Service")
    for svc, (grpc, admin, http) in SERVICES.items():
        ports = {p["name"]: p for p in services[svc]["spec"]["ports"]}
        assert ports["grpc"]["port"] == grpc and ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
        assert ports["admin"]["port"] == admin and ports["admin"]["appProtocol"] == "http"
        assert ("http" in ports) == (http is not None), svc
        if http:
            assert ports["http"]["port"] == http and ports["http"]["appProtocol"] == "http"


def test_each_service_has_its_companions(overlay):
    name, docs = overlay
    pdbs = by_kind(docs, "PodDisruptionBudget")
    accounts = by_kind(docs, "ServiceAccount")
    jobs = by_kind(docs, "Job")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    deployments = by_kind(docs, "Deployment")
    configmaps = by_kind(docs, "ConfigMap")
    for svc in SERVICES:
        dep = deployments[svc]
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert any(labels_match(p["spec"]["selector"], pod_labels) for p in pdbs.values()), f"{svc}: no PDB"
        assert svc in accounts, f"{svc}: no ServiceAccount"
        job = jobs[f"{svc}-migrate"]
        (migrate,) = job["spec"]["template"]["spec"]["containers"]
        assert migrate["command"] == [f"followup-{svc}", "migrate"], svc
        assert migrate["image"] == dep["spec"]["template"]["spec"]["containers"][0]["image"], svc
        refs = [e["configMapRef"]["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["envFrom"]
                if "configMapRef" in e]
        assert any(r.startswith(f"{svc}-config") for r in refs), f"{svc}: no ConfigMap of its own"
        assert all(r in configmaps for r in refs), f"{name}: {svc} refers to a ConfigMap that is not rendered"
        if svc in AUTOSCALED:
            assert hpas[svc]["spec"]["scaleTargetRef"]["name"] == svc
            assert "replicas" not in dep["spec"], f"{svc}: replicas fights its autoscaler on every apply"
        else:
            assert svc not in hpas


def test_secrets_are_referenced_never_inlined(overlay):
    name, docs = overlay
    assert not [d for d in docs if d["kind"] == "Secret"], f"{name}: a Secret object is rendered"
    referenced = set()
    for what, _doc, spec in pod_specs(docs):
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
        for c in containers(spec):
            for env in c.get("env", []):
                source = env.get("valueFrom", {}).get("secretKeyRef")
                if source:
                    referenced.add(source["name"])
                elif SECRET_NAME.search(env["name"]):
                    pytest.fail(f"{name}: {what} sets {env['name']} without a Secret")
                assert not SECRET_VALUE.search(env.get("value", "")), f"{name}: {what} {env['name']}"
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    referenced.add(source["secretRef"]["name"])
    for cm in by_kind(docs, "ConfigMap").values():
        for key, value in cm.get("data", {}).items():
            assert not SECRET_NAME.search(key), f"{name}: ConfigMap {cm['metadata']['name']} holds {key}"
            assert not SECRET_VALUE.search(value), f"{name}: ConfigMap {cm['metadata']['name']} holds a secret"
    for ingress in by_kind(docs, "Ingress").values():
        referenced.update(t["secretName"] for t in ingress["spec"].get("tls", []))
    # Every Secret an operator must create is documented, by name.
    readme = (DEPLOY / "README.md").read_text()
    undocumented = sorted(s for s in referenced if f"`{s}`" not in readme)
    assert not undocumented, f"{name}: deploy/README.md does not document the Secrets {undocumented}"


def test_network_policies_deny_by_default_and_cover_every_pod(overlay):
    name, docs = overlay
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    for what, doc, _spec in pod_specs(docs):
        labels = doc["spec"]["template"]["metadata"]["labels"]
        egress = [p for p in policies.values()
                  if "Egress" in p["spec"]["policyTypes"] and p["spec"].get("egress")
                  and labels_match(p["spec"]["podSelector"], labels)]
        assert egress, f"{name}: {what} can reach nothing, not even DNS"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            ingress = [p for p in policies.values()
                       if "Ingress" in p["spec"]["policyTypes"] and p["spec"].get("ingress")
                       and p["spec"]["podSelector"] != {}
                       and labels_match(p["spec"]["podSelector"], labels)]
            assert ingress, f"{name}: no policy says who may reach {what}"


def test_ingress_routes_the_public_endpoints(overlay):
    name, docs = overlay
    (ingress,) = by_kind(docs, "Ingress").values()
    routes = {p["path"]: p["backend"]["service"]["name"]
              for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    # The routes each service's HTTP router serves (services/<name>/src/http).
    assert routes == {
        "/p": "plans", "/v1/portal": "plans",
        "/v1/beacons": "engagement", "/v1/beacon.js": "engagement",
        "/sms": "notifications", "/unsubscribe": "notifications",
    }
    for r in ingress["spec"]["rules"]:
        for p in r["http"]["paths"]:
            assert p["backend"]["service"]["port"] == {"name": "http"}, p["path"]
    # The host the services put in the links they send is the host the Ingress serves.
    (host,) = {r["host"] for r in ingress["spec"]["rules"]}
    configs = {n.rsplit("-", 1)[0]: c["data"] for n, c in by_kind(docs, "ConfigMap").items()}
    if name == "production":
        assert configs["plans-config"]["FOLLOWUP_PLANS__PORTAL_BASE_URL"] == f"https://{host}"
        assert configs["notifications-config"]["FOLLOWUP_NOTIFICATIONS__PUBLIC_BASE_URL"] == f"https://{host}"


def test_production_is_highly_available():
    docs = render("production")
    common = next(c for n, c in by_kind(docs, "ConfigMap").items() if n.startswith("followup-common"))
    assert common["data"]["FOLLOWUP__STREAM_REPLICAS"] == "3"
    nats = by_kind(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    conf = next(c for n, c in by_kind(docs, "ConfigMap").items() if n.startswith("nats-config"))["data"]
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf["nats.conf"], re.M), "acknowledged writes fsynced"
    assert "postgres" not in by_kind(docs, "StatefulSet"), "production uses an external PostgreSQL"
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    for svc, dep in by_kind(docs, "Deployment").items():
        replicas = hpas[svc]["spec"]["minReplicas"] if svc in hpas else dep["spec"].get("replicas", 1)
        assert replicas >= 2, f"{svc} runs a single replica in production"
    for svc, dep in by_kind(docs, "Deployment").items():
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert not image.endswith(":latest") and ":" in image, f"{svc}: {image} is not a release"


def test_dev_runs_everything_in_cluster():
    docs = render("dev")
    sets = by_kind(docs, "StatefulSet")
    assert sets["nats"]["spec"]["replicas"] == 1 and sets["postgres"]["spec"]["replicas"] == 1
    for svc, dep in by_kind(docs, "Deployment").items():
        assert dep["spec"].get("replicas", 1) == 1, svc


def test_the_image_holds_every_binary_the_manifests_run():
    build = (DEPLOY / "build.sh").read_text()
    listed = set(re.search(r"^binaries=\(([^)]*)\)", build, re.M).group(1).split())
    cargo = shutil.which("cargo")
    if cargo:
        meta = json.loads(subprocess.run(
            [cargo, "metadata", "--no-deps", "--format-version", "1", "--offline"],
            cwd=REPO, check=True, capture_output=True, text=True,
        ).stdout)
        # A package's binaries at src/main.rs are what it ships; src/bin/ holds load generators and tools.
        shipped = {t["name"] for p in meta["packages"] for t in p["targets"]
                   if "bin" in t["kind"] and t["src_path"].endswith("/src/main.rs")}
        assert listed == shipped, f"deploy/build.sh builds {sorted(listed)}, the workspace ships {sorted(shipped)}"
    for overlay in OVERLAYS:
        for what, _doc, spec in pod_specs(render(overlay)):
            for c in containers(spec):
                if "followup" in c["image"] and "nats" not in c["image"]:
                    assert c["command"][0] in listed, f"{overlay}: {what} runs {c['command'][0]}"
    instructions = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines()
                    if not line.lstrip().startswith("#")]
    steps = "\n".join(instructions)
    assert "deploy/build.sh" in steps and "cargo build" not in steps, "one release build, in build.sh"


def test_accepted_scanner_findings_are_justified_in_the_readme():
    readme = (DEPLOY / "README.md").read_text()
    section = readme.split("## Accepted scanner findings", 1)[1].split("\n## ", 1)[0]
    checkov = yaml.safe_load((DEPLOY / "checkov.yaml").read_text())
    accepted = set(checkov.get("skip-check", []))
    for path in [DEPLOY / "Dockerfile", *(DEPLOY / "kustomize").rglob("*.yaml")]:
        accepted.update(re.findall(r"checkov:skip=(CKV\w+)", path.read_text()))
        accepted.update(re.findall(r"checkov\.io/skip\d*:?\s*(CKV\w+)", path.read_text()))
        accepted.update(re.findall(r"value: (CKV\w+)=", path.read_text()))
    assert accepted, "no accepted findings found: the patterns above are stale"
    missing = sorted(a for a in accepted if a not in section)
    assert not missing, f"deploy/README.md does not justify {missing}"


# Stand-ins for Secret values, shaped like the real ones, for the configuration check below.
SECRET_STANDINS = {
    "url": "postgres://user:password@db:5432/followup",
    "portal.pem": "-----BEGIN PRIVATE KEY-----\nstand-in\n-----END PRIVATE KEY-----\n",
}
PROVIDER_STANDINS = {
    "FOLLOWUP_NOTIFICATIONS__UNSUBSCRIBE_SIGNING_KEY": "x" * 40,
    "FOLLOWUP_NOTIFICATIONS__SMS__AUTH_TOKEN": "token",
    "FOLLOWUP_NOTIFICATIONS__SMS__CALLBACK_SECRET": "whsec_stand-in",
    "FOLLOWUP_NOTIFICATIONS__SMTP__URL": "smtp://127.0.0.1:2525",
}


@pytest.mark.skipif(not os.environ.get("FOLLOWUP_BIN_DIR"), reason="set FOLLOWUP_BIN_DIR=target/debug (or release)")
def test_every_service_accepts_its_manifest_configuration(overlay):
    """Runs `<binary> config` with exactly the environment each container gets (Secrets by stand-ins): the
    services refuse unknown or malformed keys, so a renamed key fails here rather than in a rollout.
    Opt-in, since it needs the binaries built: FOLLOWUP_BIN_DIR=target/debug deploy/validate.sh"""
    name, docs = overlay
    bin_dir = Path(os.environ["FOLLOWUP_BIN_DIR"])
    if not bin_dir.is_absolute():
        bin_dir = REPO / bin_dir
    configmaps = {n: c.get("data", {}) for n, c in by_kind(docs, "ConfigMap").items()}
    for what, _doc, spec in pod_specs(docs):
        for c in containers(spec):
            if not c.get("command", [""])[0].startswith("followup-"):
                continue
            env = {"PATH": os.environ.get("PATH", "")}
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    env.update(configmaps[source["configMapRef"]["name"]])
                if "secretRef" in source:
                    env.update(PROVIDER_STANDINS)
            for var in c.get("env", []):
                if "value" in var:
                    env[var["name"]] = var["value"]
                elif "secretKeyRef" in var.get("valueFrom", {}):
                    env[var["name"]] = SECRET_STANDINS[var["valueFrom"]["secretKeyRef"]["key"]]
            done = subprocess.run([str(bin_dir / c["command"][0]), "config"], env=env,
                                  capture_output=True, text=True)
            assert done.returncode == 0, f"{name}: {what}: {done.stderr.strip()}"


def test_the_first_rollout_phase_holds_what_migrations_need(overlay):
    """deploy/rollout.sh applies `-l app.kubernetes.io/component!=server` first, waits for the migration
    Jobs, then applies everything: the first phase must hold every Job and all a Job refers to, and none of
    the services' serving objects."""
    name, docs = overlay
    first = [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "server"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in first}
    for svc in SERVICES:
        assert ("Job", f"{svc}-migrate") in kinds
        assert ("ServiceAccount", svc) in kinds, f"{name}: {svc}-migrate's ServiceAccount comes later"
        for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
            assert (kind, svc) not in kinds, f"{name}: {kind}/{svc} is applied before the migrations"
    names = {n for _, n in kinds}
    for _what, job, spec in pod_specs(first):
        if job["kind"] != "Job":
            continue
        for c in containers(spec):
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in names, f"{name}: {job['metadata']['name']}"
    policies = [d for d in first if d["kind"] == "NetworkPolicy"]
    job_labels = next(j for j in first if j["kind"] == "Job")["spec"]["template"]["metadata"]["labels"]
    assert any("Egress" in p["spec"]["policyTypes"] and labels_match(p["spec"]["podSelector"], job_labels)
               and any(port.get("port") == 5432 for rule in p["spec"].get("egress", [])
                       for port in rule.get("ports", []))
               for p in policies), f"{name}: the migration Jobs cannot reach PostgreSQL in the first phase"
    assert ("Namespace", "followup") in kinds


def test_the_postgres_tls_note_matches_the_build():
    """deploy/README.md tells operators whether the services can speak TLS to PostgreSQL; it follows the
    sqlx features of the workspace, so enabling TLS there makes this fail until the guide says so."""
    cargo = (REPO / "Cargo.toml").read_text()
    sqlx = re.search(r"^sqlx\s*=\s*\{.*\}\s*$", cargo, re.M)
    assert sqlx, "no sqlx line in the workspace Cargo.toml"
    has_tls = re.search(r'"tls-(rustls|native)', sqlx.group(0)) is not None
    says_unavailable = "TLS to PostgreSQL: not available" in (DEPLOY / "README.md").read_text()
    assert has_tls != says_unavailable, (
        "sqlx is now built with TLS: rewrite deploy/README.md's PostgreSQL TLS note (sslmode=verify-full)"
        if has_tls else "deploy/README.md must say that TLS to PostgreSQL is not available")
