"""The cluster files hold up: cluster.yaml against Ray's own schema, k8s/ against the KubeRay CRDs
and the Kubernetes schemas, no secret value in any of them, and `roadseg submit`'s request logic."""
from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from roadseg_dist.ops import submit
from roadseg_dist.settings import SettingsError

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT.parent / "shared" / "schemas" / "kuberay"
K8S_VERSION = "1.30.0"
MANIFESTS = sorted((ROOT / "k8s").glob("*.yaml"))
CLUSTER_FILES = [ROOT / "cluster.yaml", *MANIFESTS, *sorted((ROOT / "jobs").iterdir())]


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_documents() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in MANIFESTS for d in documents(p)]


# --- cluster.yaml --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validator(cluster_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster_config)))  # raises on any schema error
    broken = copy.deepcopy(cluster_config)
    broken["available_node_types"]["gpu_worker"]["min_wrokers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wrokers"):
        validate_config(prepare_config(broken))


def test_cluster_yaml_node_types(cluster_config):
    types = cluster_config["available_node_types"]
    assert cluster_config["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    for name in ("gpu_worker", "cpu_worker"):
        assert types[name]["min_workers"] == 0 < types[name]["max_workers"], name  # autoscaling
    for name, t in types.items():  # S3 through an instance profile on every node
        assert t["node_config"]["IamInstanceProfile"]["Name"], name
    assert cluster_config["file_mounts"] == {"/home/ubuntu/roadseg_dist": "."}
    assert any("pip install" in c and "-e ~/roadseg_dist" in c for c in cluster_config["setup_commands"])


def test_cluster_yaml_token_auth_and_private_dashboard(cluster_config):
    starts = cluster_config["head_start_ray_commands"] + cluster_config["worker_start_ray_commands"]
    for cmd in (c for c in starts if "ray start" in c):
        assert "RAY_AUTH_MODE=token ray start" in cmd, cmd
    head = next(c for c in cluster_config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in " ".join(starts)
    # the token comes from Secrets Manager on the node, into a file only this user can read
    fetch = [c for c in cluster_config["setup_commands"] if "secretsmanager" in c]
    assert len(fetch) == 1 and "umask 077" in fetch[0] and "~/.ray/auth_token" in fetch[0]
    # nothing is open to the world: SSH only, from a CIDR the user sets (a closed one by default)
    import ipaddress

    rules = cluster_config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    for r in rules[0]["IpRanges"]:
        assert ipaddress.ip_network(r["CidrIp"]).prefixlen > 0, r
    assert "0.0.0.0/0" not in (ROOT / "cluster.yaml").read_text().split("Never 0.0.0.0/0")[0]


# --- k8s: schemas ----------------------------------------------------------------------------------

def strict(schema):
    """A CRD's openAPIV3Schema as JSON Schema that rejects unknown fields, as `kubectl --validate=strict`.

    Kubernetes prunes unknown fields silently; a typo in a manifest would then vanish without an
    error, so the test forbids them except where the CRD preserves unknown fields.
    """
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@functools.lru_cache(maxsize=None)
def load_crd(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2 MB


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str, api_version: str) -> jsonschema.Draft7Validator:
    group, version = api_version.split("/")
    for path in sorted(CRDS.glob("*.yaml")):
        crd = load_crd(path)
        if crd["spec"]["names"]["kind"] == kind and crd["spec"]["group"] == group:
            served = {v["name"]: v for v in crd["spec"]["versions"]}
            schema = strict(served[version]["schema"]["openAPIV3Schema"])
            # (checking a 1 MB schema against the meta-schema takes seconds; an OpenAPI schema is
            # not a draft meta-schema document anyway, so build the validator directly)
            return jsonschema.Draft7Validator(schema)
    raise LookupError(f"no CRD for {kind} {api_version} under {CRDS}")


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """Every pod template of a RayCluster / RayJob (head, worker groups, the job submitter)."""
    spec = doc["spec"]
    out = []
    if doc["kind"] == "RayJob":
        if "submitterPodTemplate" in spec:
            out.append(("submitter", spec["submitterPodTemplate"]))
        spec = spec["rayClusterSpec"]
    out.append(("head", spec["headGroupSpec"]["template"]))
    out += [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
    return out


def validate_manifest(doc: dict) -> None:
    """Raise if ``doc`` is not valid for its CRD (KubeRay kinds) or for Kubernetes' own schemas."""
    if doc["apiVersion"].startswith("ray.io/"):
        crd_schema(doc["kind"], doc["apiVersion"]).validate(doc)
        for name, template in pod_templates(doc):  # the core PodTemplateSpec, strictly
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                       "template": template}
            kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_manifests_exist():
    kinds = sorted(d["kind"] for _, d in all_documents())
    assert kinds == ["NetworkPolicy", "NetworkPolicy", "RayCluster", "RayJob", "RayJob", "ServiceAccount"]
    assert (ROOT / "k8s" / "README.md").exists() and (ROOT / "k8s" / "Dockerfile").exists()


@pytest.mark.parametrize("name,doc", all_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_is_valid(name, doc):
    validate_manifest(doc)


def test_validation_catches_typos_and_bad_values():
    doc = next(d for _, d in all_documents() if d["kind"] == "RayCluster")
    typo = copy.deepcopy(doc)
    typo["spec"]["headGroupSpec"]["serviceTyp"] = "ClusterIP"
    with pytest.raises(jsonschema.ValidationError, match="serviceTyp"):
        validate_manifest(typo)
    bad_mode = copy.deepcopy(doc)
    bad_mode["spec"]["authOptions"]["mode"] = "password"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(bad_mode)
    bad_pod = copy.deepcopy(doc)
    bad_pod["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(jsonschema.ValidationError, match="imagePullPolice"):
        validate_manifest(bad_pod)
    account = copy.deepcopy(next(d for _, d in all_documents() if d["kind"] == "ServiceAccount"))
    account["automountServiceAccountTokens"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(account)


# --- k8s: what the manifests promise ---------------------------------------------------------------

def ray_cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for name, doc in all_documents():
        if doc["kind"] == "RayCluster":
            out.append((name, doc["spec"]))
        elif doc["kind"] == "RayJob":
            out.append((name, doc["spec"]["rayClusterSpec"]))
    return out


def test_token_auth_private_dashboard_and_gpu_groups():
    for name, spec in ray_cluster_specs():
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", name
        assert not spec["headGroupSpec"].get("enableIngress"), name
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
        assert gpu["requests"]["nvidia.com/gpu"] == gpu["limits"]["nvidia.com/gpu"] == "1", name
    for name, doc in all_documents():
        assert doc["kind"] not in ("Ingress", "Service"), name
        if doc["kind"] == "RayJob":  # the submitter reads the token from the same Secret
            env = {e["name"]: e for e in pod_templates(doc)[0][1]["spec"]["containers"][0]["env"]}
            auth = next(s for n, s in ray_cluster_specs() if n == name)["authOptions"]
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == auth["secretName"]


def test_network_policy_lets_only_the_cluster_and_its_clients_reach_the_head():
    policies = {d["metadata"]["name"]: d["spec"] for _, d in all_documents() if d["kind"] == "NetworkPolicy"}
    head, workers = policies["roadseg-ray-head"], policies["roadseg-ray-workers"]
    member = {"app.kubernetes.io/name": "roadseg"}

    def selects(selector: dict, labels: dict) -> bool:
        ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
        for e in selector.get("matchExpressions", []):
            ok = ok and (labels.get(e["key"]) in e["values"]) == (e["operator"] == "In")
        return ok

    pods = {f"{name}:{group}": t["metadata"]["labels"]
            for name, doc in all_documents() if doc["kind"] in ("RayCluster", "RayJob")
            for group, t in pod_templates(doc)}
    for where, labels in pods.items():  # every pod of ours is a member; the heads are selected
        assert selects({"matchLabels": member}, labels), where
        is_head = labels.get("app.kubernetes.io/component") == "ray-head"
        assert selects(head["podSelector"], labels) == is_head, where
        assert selects(workers["podSelector"], labels) == labels["app.kubernetes.io/component"].startswith(
            "ray-worker"), where
    assert head["policyTypes"] == workers["policyTypes"] == ["Ingress"]
    peers = [(p["podSelector"]["matchLabels"], sorted(x["port"] for x in rule.get("ports", [])))
             for rule in head["ingress"] for p in rule["from"]]
    assert peers == [(member, []), ({"roadseg.io/ray-client": "true"}, [8265, 10001])]
    assert [p["podSelector"]["matchLabels"] for r in workers["ingress"] for p in r["from"]] == [member]
    assert not any("ipBlock" in p or "namespaceSelector" in p
                   for pol in policies.values() for r in pol["ingress"] for p in r["from"])


def test_pods_run_as_non_root_with_requests_and_limits():
    for name, doc in all_documents():
        if doc["kind"] not in ("RayCluster", "RayJob"):
            continue
        for group, template in pod_templates(doc):
            pod = template["spec"]
            where = f"{name}:{group}"
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["runAsUser"] != 0, where
            assert pod["serviceAccountName"] == "roadseg-ray", where
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                assert sc.get("runAsUser", 1000) != 0, where
                assert set(c["resources"]["requests"]) >= {"cpu", "memory"}, where
                assert c["resources"]["limits"]["memory"] == c["resources"]["requests"]["memory"], where


# --- no secret values anywhere -----------------------------------------------------------------

SECRET_NAME = re.compile(r"(?i)(secret|token|password|passwd|access_key|api_key|credential)")
SECRET_VALUE = (
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # an AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{20,}"),
    re.compile(r"(?i)(password|passwd|token|secret)\s*[=:]\s*['\"]?[A-Za-z0-9/+_\-]{12,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b[0-9a-f]{32,}\b"),  # a hex token
)


def secret_values(text: str) -> list[str]:
    return [m.group(0) for p in SECRET_VALUE for m in p.finditer(text)]


def literal_secret_env(doc) -> list[str]:
    """Env vars with a secret-sounding name and a literal value; Secret objects that carry data."""
    found = []
    if isinstance(doc, dict):
        if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            found.append(f"Secret {doc.get('metadata', {}).get('name')} carries data")
        if "name" in doc and "value" in doc and SECRET_NAME.search(str(doc["name"])):
            found.append(f"{doc['name']}={doc['value']!r}")
        for v in doc.values():
            found += literal_secret_env(v)
    elif isinstance(doc, list):
        for v in doc:
            found += literal_secret_env(v)
    return found


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_secret_values_in_cluster_files(path):
    text = path.read_text()
    assert secret_values(text) == [], path
    if path.suffix == ".yaml":
        for doc in yaml.safe_load_all(text):
            assert literal_secret_env(doc) == [], path


def test_secret_scan_finds_what_it_looks_for():
    leaky = {"kind": "Secret", "stringData": {"k": "v"}, "spec": {"env": [
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"},
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "auth_token"}}}]}}
    assert literal_secret_env(leaky) == ["Secret None carries data", "AWS_SECRET_ACCESS_KEY='abc'"]
    text = ("id: AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
            "token: 8f14e45fceea167a5a36dedd4bea2543\n")
    assert len(secret_values(text)) == 4  # the key id, the secret key, the token (twice: name and hex)


# --- jobs/ and `roadseg submit` ------------------------------------------------------------------

def test_jobs_entrypoints_and_runtime_env():
    from ray.runtime_env import RuntimeEnv

    for job in submit.JOBS:
        assert (ROOT / "jobs" / f"{job}.py").is_file(), job
    env = submit.job_runtime_env(ROOT, env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    RuntimeEnv(**env)  # Ray accepts it
    assert env["working_dir"] == str(ROOT) and "runs" in env["excludes"]
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    line = submit.describe(env)
    assert "AWS_ENDPOINT_URL" in line and "9000" not in line


def test_runtime_env_override_file_merges_env_vars(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("pip: [tqdm]\nenv_vars:\n  OMP_NUM_THREADS: '4'\n")
    env = submit.job_runtime_env(ROOT, str(extra), env={"AWS_REGION": "eu-west-1"})
    assert env["pip"] == ["tqdm"]
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "4", "AWS_REGION": "eu-west-1"}
    extra.write_text("- not a mapping\n")
    with pytest.raises(SettingsError, match="runtime_env mapping"):
        submit.job_runtime_env(ROOT, str(extra), env={})


def test_entrypoint_and_address():
    cmd = submit.entrypoint("train", ["--data", "s3://b/my shards", "--name", "r;rm -rf /"])
    assert cmd == "python jobs/train.py --data 's3://b/my shards' --name 'r;rm -rf /'"
    with pytest.raises(SettingsError, match="unknown job"):
        submit.entrypoint("deploy", [])
    assert submit.resolve_address(None, {}) == "http://127.0.0.1:8265"
    assert submit.resolve_address("10.0.0.5:8265/", {}) == "http://10.0.0.5:8265"
    assert submit.resolve_address(None, {"RAY_ADDRESS": "https://ray.internal"}) == "https://ray.internal"
    assert submit.resolve_address(None, {"RAY_API_SERVER_ADDRESS": "http://a:1", "RAY_ADDRESS": "b"}) == "http://a:1"
    with pytest.raises(SettingsError, match="names no cluster"):
        submit.resolve_address("local", {})
    assert [submit.exit_code(s) for s in ("SUCCEEDED", "FAILED", "STOPPED")] == [0, 1, 2]


def test_find_project_rejects_a_folder_that_is_not_a_checkout(tmp_path):
    assert submit.find_project() == ROOT
    with pytest.raises(SettingsError, match="not a roadseg_dist checkout"):
        submit.find_project(str(tmp_path))


def test_submit_to_nothing_says_what_to_do():
    from click.testing import CliRunner

    from roadseg_dist.cli import main
    from conftest import free_port

    port = free_port()
    result = CliRunner().invoke(main, ["submit", "--address", f"http://127.0.0.1:{port}", "check"])
    assert result.exit_code == 1
    assert "cannot reach the Ray Job API" in result.output and "port" in result.output


def test_stage_freezes_the_allow_listed_part_of_the_checkout():
    import os

    from roadseg_dist.ops import ship

    env = submit.job_runtime_env(ROOT, env={})
    with ship.stage(ROOT, env["excludes"]) as (frozen, manifest):
        files = {os.path.relpath(os.path.join(r, f), frozen) for r, _, fs in os.walk(frozen) for f in fs}
    assert {"jobs/train.py", "jobs/runtime_env.yaml", "roadseg_dist/ops/submit.py", "pyproject.toml"} <= files
    assert files == set(manifest.files)
    assert {f.split("/")[0] for f in files} <= set(ship.SHIP)
    assert not [f for f in files if "__pycache__" in f or ".egg-info" in f]
    assert not os.path.exists(frozen)


@pytest.mark.parametrize("path", [p for p in MANIFESTS if p.name.startswith("rayjob-")], ids=lambda p: p.name)
def test_rayjob_entrypoints_parse_with_the_real_cli(path):
    import shlex

    from roadseg_dist.cli import main

    argv = shlex.split(documents(path)[0]["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith("/home/ray/roadseg/jobs/")
    job = Path(argv[1]).stem
    assert (ROOT / "jobs" / f"{job}.py").is_file()
    command = main.get_command(click.Context(main), job)
    ctx = command.make_context(job, argv[2:])  # raises on an unknown flag or a missing argument
    assert ctx.params


class FakeJobAPI:
    """Ray's Job API for one job that ends with ``status`` and ``driver_exit_code`` (as JobInfo says)."""

    def __init__(self, status: str, driver_exit_code: int | None):
        from ray.job_submission import JobStatus

        self.status, self.code, self.JobStatus = status, driver_exit_code, JobStatus

    def submit_job(self, **request):
        return "raysubmit_fake"

    async def tail_job_logs(self, job_id):
        yield "infer: 1/2 source(s) done\n"

    def get_job_status(self, job_id):
        return self.JobStatus(self.status)

    def get_job_info(self, job_id):
        from ray.job_submission import JobDetails

        return JobDetails(type="SUBMISSION", entrypoint="python jobs/infer.py", status=self.JobStatus(self.status),
                          message="Job entrypoint command failed with exit code 3", driver_exit_code=self.code)


@pytest.mark.parametrize("status,driver_code,expected", [
    ("FAILED", 3, 3),        # infer with failed sources: 3 locally, and now through submit too
    ("SUCCEEDED", 0, 0), ("FAILED", 1, 1), ("FAILED", None, 1),  # never started: no driver code
    ("FAILED", -9, 137), ("STOPPED", -15, 2)])
def test_submit_exits_with_the_jobs_own_exit_code(monkeypatch, status, driver_code, expected):
    monkeypatch.setattr(submit, "client", lambda address: FakeJobAPI(status, driver_code))
    said = []
    s = submit.SubmitSettings(job="infer", address="http://127.0.0.1:1")
    assert submit.submit(s, ["ckpt", "in", "out"], log=said.append) == expected
    assert said[-1].startswith(f"roadseg submit: job raysubmit_fake {status}")
