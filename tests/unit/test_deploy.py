"""The deployment files: the Dockerfile, the Kubernetes manifests and the cluster options.

No container engine runs on the development machines or in CI, so the Dockerfile is checked
two ways: statically (base image, no JDK/Maven/broker, non-root user, entry point, what it
copies), and by reproducing its install steps outside a container: the build context is
exactly what its COPY lines name, the wheel is built from it with the Dockerfile's
``pip wheel`` command, installed into a fresh venv (not the editable source tree), and the
image's entry point runs from there (``waxflow --help``, ``validate`` of the shipped flows).
The fast variant lets that venv fall back to the project venv for third-party packages (and
checks the wheel's pinned requirements against them with ``pip check``);
``bench/dockerfile_full.py`` also resolves every dependency from the package index into a
venv of its own, as the image build does (minutes; run on demand).

The manifests are validated against Kubernetes' own OpenAPI schemas (``kubernetes-validate``,
strict: unknown fields fail) for the oldest and newest versions it ships, then checked for
what waxflow relies on.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from waxflow import cli

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "deploy" / "kubernetes"


# ------------------------------------------------------------------ Dockerfile
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        result[-1].append(ins)
    return result


def test_dockerfile_is_a_slim_python_image_without_jdk_maven_or_broker() -> None:
    froms = [args for ins, args in instructions() if ins == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms), froms
    text = DOCKERFILE.read_text().lower()
    body = "\n".join(args for ins, args in instructions() if ins in ("RUN", "COPY", "ENV"))
    for banned in ("openjdk", "jdk", "jre", "maven", "mvn", "kafka_2.13", "broker start",
                   "apt-get install"):
        assert banned not in body.lower(), banned
    assert "python:3.11-slim" in text
    final = stages()[-1]
    runs = [args for ins, args in final if ins == "RUN"]
    assert any("pip install --no-cache-dir /wheels/" in r for r in runs)
    assert not any(ins == "COPY" and "--from=build" not in args for ins, args in final), \
        "the runtime stage copies only the built wheel"


def test_dockerfile_runs_as_a_non_root_user_with_the_waxflow_entry_point() -> None:
    final = stages()[-1]
    users = [args for ins, args in final if ins == "USER"]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, users  # numeric: runAsNonRoot can verify it
    assert any(f"--uid {uid}" in args for ins, args in final if ins == "RUN")
    entry = [args for ins, args in final if ins == "ENTRYPOINT"]
    assert entry == ['["waxflow"]']
    assert ("EXPOSE", "9100") in final
    env = " ".join(args for ins, args in final if ins == "ENV")
    assert "WAXFLOW_METRICS_PORT=9100" in env
    # the Kubernetes manifests run as that user
    for doc in manifests():
        spec = pod_spec(doc)
        if spec is not None:
            assert spec["securityContext"]["runAsUser"] == int(uid)
            assert spec["securityContext"]["runAsNonRoot"] is True


def build_context(dest: Path) -> Path:
    """The Docker build context as the build stage sees it: only what its COPY lines name."""
    for ins, args in stages()[0]:
        if ins != "COPY":
            continue
        *sources, target = shlex.split(args)
        for src in sources:
            path = REPO / src
            out = dest / (src if target.endswith("/") or target == "./" else target)
            if path.is_dir():
                shutil.copytree(path, out, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)
    return dest


def build_wheel(tmp_path: Path) -> Path:
    """The build stage's ``pip wheel ... .`` in a copy of its context (the project venv's
    setuptools, no build isolation: no download)."""
    (cmd,) = [args for ins, args in stages()[0] if ins == "RUN"]
    assert cmd == "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .", cmd
    ctx = build_context(tmp_path / "context")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), "."],
                   cwd=ctx, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("waxflow-*.whl")
    return wheel


def run_entry(bindir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bindir / "waxflow"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def check_installed(bindir: Path, tmp_path: Path) -> None:
    """What the image's ``waxflow`` must do, from outside the source tree."""
    where = subprocess.run([str(bindir / "python"), "-c",
                            "import waxflow, waxflow.dataflows, waxflow.connectors.metrics; "
                            "print(waxflow.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert where.returncode == 0, where.stderr
    assert not where.stdout.startswith(str(REPO)), "imported the source tree, not the wheel"
    res = run_entry(bindir, "--help", cwd=tmp_path)
    assert res.returncode == 0 and "run" in res.stdout, res.stderr
    res = run_entry(bindir, "run", "--help", cwd=tmp_path)
    assert "--metrics-port" in res.stdout and "--addresses" in res.stdout
    flows = tmp_path / "flows"
    flows.mkdir()
    for name, text in configmap_flows().items():
        (flows / name).write_text(text)
    # one flow (every manifest flow is validated in process below): the wheel's task
    # modules, schema and expressions load from the install
    res = run_entry(bindir, "validate", str(flows / "orders.yaml"), cwd=tmp_path)
    assert res.returncode == 0 and "valid flow shop.orders-realtime" in res.stdout, \
        res.stdout + res.stderr


def test_dockerfile_install_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)],
                           capture_output=True, text=True, check=True).stdout
    for part in ("waxflow/cli.py", "waxflow/dataflows/flows/orders_realtime.yaml",
                 "waxflow/operators/", "waxflow/connectors/health.py", "waxflow/recovery/"):
        assert part in names, part
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    # third-party packages from the project venv (the image resolves them from the index;
    # pip check below holds the wheel's pins against them)
    project_site = next(Path(p) for p in sys.path if p.endswith("site-packages")
                        and Path(p, "bytewax").exists())
    (site / "zz_project_deps.pth").write_text(f"{project_site}\n")
    pip = [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python")]
    subprocess.run([*pip, "install", "--no-cache-dir", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=120)
    problems = [line for line in check.stdout.splitlines() if line.startswith("waxflow ")]
    assert not problems, check.stdout
    check_installed(env_dir / "bin", tmp_path)


# ------------------------------------------------------------------ Kubernetes
def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("StatefulSet", "Deployment"):
        return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


def configmap_flows() -> dict[str, str]:
    (flows,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "waxflow-flows"]
    return flows["data"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", ["1.27.0", kubernetes_validate.latest_version()])
def test_manifests_pass_the_kubernetes_schemas_strictly(version: str) -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"ConfigMap", "Secret", "Service", "StatefulSet",
                                         "Deployment", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_is_real() -> None:
    """A misspelt field fails (strict), so a passing manifest means something."""
    (sts,) = by_kind("StatefulSet")
    bad = yaml.safe_load(yaml.safe_dump(sts))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                               if p.name != "kustomization.yaml")


def container(doc: dict[str, Any]) -> dict[str, Any]:
    spec = pod_spec(doc)
    assert spec is not None
    (c,) = spec["containers"]
    return c  # type: ignore[no-any-return]


def env_value(c: dict[str, Any], name: str) -> str | None:
    return next((e.get("value") for e in c.get("env", []) if e["name"] == name), None)


def test_statefulset_runs_one_cluster_member_per_pod() -> None:
    (sts,) = by_kind("StatefulSet")
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    svc = services[sts["spec"]["serviceName"]]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    assert svc["spec"]["selector"].items() <= \
        sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    c = container(sts)
    replicas = sts["spec"]["replicas"]
    assert env_value(c, "REPLICAS") == str(replicas)
    cluster_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "cluster")
    # run the container's script for the last pod, with `waxflow` printing its arguments
    script = c["args"][0].replace("exec waxflow", "printf '%s\\n'")
    name = sts["metadata"]["name"]
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                         env={"POD_NAME": f"{name}-{replicas - 1}",
                              "REPLICAS": str(replicas), "PATH": os.environ["PATH"]}).stdout
    argv = out.split("\n")[:-1]
    assert argv[:2] == ["run", "/flows/orders.yaml"]
    args = cli.build_parser().parse_args(argv)
    cli._check_combinations(cli.build_parser(), args)  # a usage error would exit
    assert args.process_id == replicas - 1
    assert cli._addresses(args.addresses) == [
        f"{name}-{i}.{svc['metadata']['name']}:{cluster_port}" for i in range(replicas)]
    assert args.metrics_port == 9100


def test_pods_probe_health_expose_metrics_and_stop_gracefully() -> None:
    for doc in by_kind("StatefulSet") + by_kind("Deployment"):
        spec, c = pod_spec(doc), container(doc)
        assert spec is not None
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        port = int(annotations["prometheus.io/port"])
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert named["metrics"] == port
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        shutdown = float(env_value(c, "WAXFLOW_SHUTDOWN_TIMEOUT") or 30)
        assert spec["terminationGracePeriodSeconds"] > shutdown
        assert {"configMapRef": {"name": "waxflow-env"}} in c["envFrom"]
        assert {"secretRef": {"name": "waxflow-secrets"}} in c["envFrom"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/flows", "/var/lib/waxflow", "/tmp"} <= mounts
    (secret,) = by_kind("Secret")
    assert all(k.startswith("WAXFLOW_SECRET_") for k in secret["stringData"])


def test_manifest_flows_validate_and_fit_their_workload(tmp_path: Path) -> None:
    from waxflow.dataflows.spec import parse_flow

    parsed = {}
    for name, text in configmap_flows().items():
        (tmp_path / name).write_text(text)
        parsed[name] = parse_flow(tmp_path / name)
    (sts,) = by_kind("StatefulSet")
    (dep,) = by_kind("Deployment")
    assert "/flows/orders.yaml" in container(sts)["args"][0]
    assert parsed["orders.yaml"].trigger.groupType == "CONSUMER"  # type: ignore[union-attr]
    assert container(dep)["args"][:2] == ["run", "/flows/queue.yaml"]
    assert parsed["queue.yaml"].trigger.groupType == "SHARE"  # type: ignore[union-attr]
    uses = {m.group(1) for m in re.finditer(r"secret\('(\w+)'\)",
                                            "".join(configmap_flows().values()))}
    (secret,) = by_kind("Secret")
    assert {f"WAXFLOW_SECRET_{u}" for u in uses} <= set(secret["stringData"])


# ------------------------------------------------------------------ cluster options
@pytest.mark.parametrize(("args", "message"), [
    (["--addresses", "a:1,b:2", "--process-id", "2"], "expected a number below the 2"),
    (["--addresses", "a:1,b", "--process-id", "0"], "expected host:port entries"),
    (["--addresses", "a:1,b:2"], "needs --process-id"),
    (["--process-id", "1"], "needs --addresses"),
    (["--addresses", "a:1,b:2", "--process-id", "0", "--processes", "2"], "not with"),
    (["--metrics-port", "0"], "expected a TCP port"),
    (["--stuck-after", "0"], "expected a number of seconds > 0"),
])
def test_run_cluster_and_metrics_options_are_checked(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "flow.yaml", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_addresses_take_commas_or_semicolons() -> None:
    assert cli._addresses("h1:1, h2:2") == ["h1:1", "h2:2"]
    assert cli._addresses("h1:1;h2:2") == ["h1:1", "h2:2"]
    assert cli._addresses(None) is None
