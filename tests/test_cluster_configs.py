"""The cluster files (Dockerfile, cluster/) stay in step with the code and with each other.

Launcher configs validate against the schema that ships inside `ray`; every config runs the one image the
Dockerfile builds, at the Ray version the project pins; the jobs' command lines parse with the jobs' own
parsers; token authentication is on and the dashboard is never exposed; no file holds a credential.
Hermetic: files and parsers only, no network, no Ray cluster.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import json
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = ROOT / "Dockerfile"
README = CLUSTER / "README.md"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
JOBS = {"build_dataset", "pretrain", "sweep", "evaluate"}
SERVICE_ACCOUNT = "uni3d-ray"
# Everything a user replaces before use; cluster/README.md says what each one is.
PLACEHOLDERS = ["REGISTRY", "BUCKET", "ACCOUNT_ID", "PROJECT_ID", "FILE_SYSTEM_ID", "FILESTORE_IP"]
LOCAL_PATH = re.compile(r"(?:^|[@:])(/(?!/)[^\s,]+)")  # /x, openclip:ARCH@/x, timm:/x; not s3://x


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def pinned() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = [re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line.strip()) for line in lines]
    return {canonicalize_name(m[1]): m[2] for m in pins if m}


def kuberay_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(KUBERAY.glob("*.yaml"))}


def rayjobs() -> dict[str, dict]:
    return {name: d for name, docs in kuberay_docs().items() for d in docs if d["kind"] == "RayJob"}


def raycluster_spec() -> dict:
    (spec,) = [d["spec"] for docs in kuberay_docs().values() for d in docs if d["kind"] == "RayCluster"]
    return spec


def pod_templates(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, g["template"]["spec"]) for name, g in groups]


def gpus_per_pod(group: dict) -> int:
    (container,) = group["template"]["spec"]["containers"]
    return int(container["resources"]["limits"].get("nvidia.com/gpu", 0))


def mount_paths(spec: dict) -> set[str]:
    return {m["mountPath"] for _, pod in pod_templates(spec) for c in pod["containers"] for m in c["volumeMounts"]}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip()) for ln in text.splitlines() if ln.strip()]


def shell_commands(run: str) -> list[list[str]]:
    return [shlex.split(part) for part in re.split(r"&&|;|\|\|", run) if part.strip()]


def pip_installs() -> list[list[str]]:
    return [
        cmd
        for instr, args in dockerfile()
        if instr == "RUN"
        for cmd in shell_commands(args)
        if len(cmd) > 1 and cmd[0].endswith("pip") and cmd[1] == "install"
    ]


def local(argv: list[str]) -> list[str]:
    """An entrypoint's argv with the image's /app/ pointing at this checkout."""
    return [str(ROOT / a.removeprefix("/app/")) if a.startswith("/app/") else a for a in argv]


def parse_job(argv: list[str]):
    """(job name, its resolved config) for `python [/app/]jobs/<job>.py ...`, parsed by the job's own parse_args."""
    assert argv[0] == "python" and re.fullmatch(r"(/app/)?jobs/\w+\.py", argv[1]), argv[:2]
    job = Path(argv[1]).stem
    assert job in JOBS, job
    return job, importlib.import_module(f"jobs.{job}").parse_args(local(argv[2:]))[0]


def job_paths(argv: list[str]) -> list[str]:
    """The node-local paths a command line names: /x arguments and the file in `openclip:ARCH@/x`."""
    return [m for a in argv if not a.startswith("/app/") for m in LOCAL_PATH.findall(a)]


def ray_start_options(cmd: str) -> dict[str, str]:
    argv = shlex.split(cmd[cmd.index("ray start") :])
    return dict((a.split("=", 1) + [""])[:2] for a in argv[2:] if a.startswith("--"))


# --- the image ------------------------------------------------------------------------------------------------


def test_dockerfile_is_rays_image_at_the_pinned_version() -> None:
    steps = dockerfile()
    assert steps[0] == (
        "FROM",
        f"rayproject/ray:{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}-gpu",
    )
    assert pinned()["ray"] == ray.__version__
    assert ("WORKDIR", "/app") in steps  # the KubeRay entrypoints run /app/jobs/*.py
    env = " ".join(args for instr, args in steps if instr == "ENV")
    assert "RAY_AUTH_MODE=token" in env.split()
    assert "graphics" in re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env)[1].split(",")  # NVIDIA EGL


def test_dockerfile_installs_the_gl_libraries_the_renderer_asks_for() -> None:
    hint = re.search(
        r'_EGL_HINT = "install ([^"(]+)\(Debian\)', (ROOT / "pipelines" / "meshes" / "render.py").read_text()
    )[1]
    apt = [
        c
        for instr, args in dockerfile()
        if instr == "RUN"
        for c in shell_commands(args)
        if c[:2] == ["apt-get", "install"]
    ]
    assert apt and set(hint.split()) <= {pkg for cmd in apt for pkg in cmd}


def test_dockerfile_installs_torch_then_the_project_with_the_projects_constraints() -> None:
    pins = pinned()
    installs = pip_installs()
    assert len(installs) >= 2
    for cmd in installs:
        flags = list(zip(cmd, cmd[1:], strict=False))
        assert any(f in ("-c", "--constraint") and Path(v).name == "constraints.txt" for f, v in flags), cmd
        for arg in cmd[2:]:
            if "==" in arg:  # an explicit pin must agree with constraints.txt
                name, version = arg.split("==")
                assert pins[canonicalize_name(re.sub(r"\[.*\]", "", name))] == version, arg
    # torch and torchvision first, alone, as the Makefile does; then the project with every extra
    first = [a for a in installs[0][2:] if not a.startswith("-") and a != "constraints.txt"]
    assert sorted(first) == ["torch", "torchvision"]
    assert installs[-1][-1] == ".[all]" and "-e" in installs[-1]
    # the files pip needs are copied in before each install that needs them
    steps = dockerfile()
    copies = [i for i, (instr, args) in enumerate(steps) if instr == "COPY"]
    runs = [i for i, (instr, args) in enumerate(steps) if instr == "RUN" and "pip install" in args]
    assert "constraints.txt" in steps[copies[0]][1] and copies[0] < runs[0]
    assert steps[copies[-1]][1].split()[-2:] == [".", "."] and copies[-1] < runs[-1]


def test_every_package_the_project_asks_for_is_pinned_in_constraints() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    (all_extra,) = extras["all"]
    names = Requirement(all_extra).extras
    assert names == set(extras) - {"all"}  # `.[all]` is every extra
    pins = pinned()
    for line in project["dependencies"] + [r for name in names for r in extras[name]]:
        req = Requirement(line)
        version = pins.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(version, prereleases=True), (line, version)


def test_dockerignore_keeps_the_build_inputs_and_leaves_out_the_rest() -> None:
    patterns = [p.strip().strip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]

    def ignored(path: str) -> bool:
        prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
        return any(
            fnmatch.fnmatch(prefix, p) or (p.startswith("**/") and fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], p[3:]))
            for p in patterns
            for prefix in prefixes
        )

    needed = ["pyproject.toml", "constraints.txt", "README.md", "uni3d/data/templates.txt", "jobs/pretrain.py"]
    needed += ["configs/sweeps/scale-init.yaml", "pipelines/meshes/render.py", "uni3d/__init__.py"]
    assert not [p for p in needed if ignored(p)]
    assert all(ignored(p) for p in [".git/HEAD", ".venv/bin/python", "demo/build/x.parquet", "w/model.bin"])


# --- the launcher configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_validates_against_rays_schema(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(CLUSTER / name)
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    # as `ray up` does before it touches the cloud: merged with Ray's defaults, then validated again
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    # nothing is installed on boot, even after Ray's defaults (which pip-install) are merged in
    assert prepared["setup_commands"] == prepared["head_setup_commands"] == prepared["worker_setup_commands"] == []


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_node_types(name: str) -> None:
    config = load(CLUSTER / name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    cpu = [t for t in workers.values() if not t["resources"].get("GPU")]
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    assert cpu and gpu
    for t in workers.values():  # autoscaling from zero
        assert t["min_workers"] == 0 < t["max_workers"]
    assert config["max_workers"] >= sum(t["max_workers"] for t in workers.values())
    key = {"aws": "InstanceType", "gcp": "machineType"}[config["provider"]["type"]]
    kinds = [head["node_config"][key], cpu[0]["node_config"][key], gpu[0]["node_config"][key]]
    assert len(set(kinds)) == 3  # an instance type for each role
    if config["provider"]["type"] == "aws":  # bucket access from instance profiles
        assert all("IamInstanceProfile" in t["node_config"] for t in types.values())
    else:  # from service accounts; the launcher gives the head its own
        assert config["provider"]["region"] and config["provider"]["availability_zone"]
        assert config["provider"]["project_id"] == "PROJECT_ID"
        zone = config["provider"]["availability_zone"]
        disks = [d for t in types.values() for d in t["node_config"]["disks"]]
        assert all(d["initializeParams"]["diskType"].startswith(f"zones/{zone}/") for d in disks)
        for t in workers.values():
            (account,) = t["node_config"]["serviceAccounts"]
            assert account["email"].endswith("@PROJECT_ID.iam.gserviceaccount.com") and account["scopes"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_starts_ray_with_token_auth_and_a_loopback_dashboard(name: str) -> None:
    config = load(CLUSTER / name)
    assert "~/.ray/auth_token" in config["file_mounts"]  # the token reaches every node
    starts = {"head": config["head_start_ray_commands"], "worker": config["worker_start_ray_commands"]}
    for role, cmds in starts.items():
        (cmd,) = [c for c in cmds if "ray start" in c]
        before = cmd[: cmd.index("ray start")]
        assert "export RAY_AUTH_MODE=token;" in before, cmd
        options = ray_start_options(cmd)
        assert ("--head" in options) == (role == "head")
        assert options.get("--dashboard-host", "127.0.0.1") == "127.0.0.1"
        assert "--include-dashboard" not in options or options["--include-dashboard"] != "false"
    assert ray_start_options(starts["head"][-1])["--dashboard-host"] == "127.0.0.1"
    assert "security_group" not in config["provider"]  # Ray's default: SSH from outside, all else in-cluster


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_commands_install_nothing(name: str) -> None:
    config = load(CLUSTER / name)
    keys = [k for k in config if k.endswith("_commands")]
    commands = [c for k in keys for c in config[k]]
    commands += [c for t in config["available_node_types"].values() for k in t if k.endswith("_commands") for c in t[k]]
    for cmd in commands:
        assert not re.search(r"\b(apt|apt-get|yum|dnf|conda)\b|pip3? install", cmd), cmd


# --- KubeRay --------------------------------------------------------------------------------------------------


def test_kuberay_has_an_interactive_cluster_and_a_job_for_each_stage_on_the_same_spec() -> None:
    spec = raycluster_spec()
    jobs = rayjobs()
    scripts = {Path(shlex.split(job["spec"]["entrypoint"])[1]).stem for job in jobs.values()}
    assert scripts == JOBS
    for name, job in jobs.items():
        assert job["spec"]["rayClusterSpec"] == spec, f"{name}: rayClusterSpec differs from raycluster.yaml's spec"
        assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
        assert job["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode"
        assert "clusterSelector" not in job["spec"]


def test_kuberay_cluster_spec() -> None:
    spec = raycluster_spec()
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    assert "headService" not in head
    assert head["rayStartParams"]["num-cpus"] == "0"
    workers = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {gpus_per_pod(g) > 0 for g in workers.values()} == {True, False}  # CPU and GPU groups
    for g in workers.values():
        assert g["minReplicas"] == 0 < g["maxReplicas"] and g.get("replicas", 0) <= g["maxReplicas"]
    for group, pod in pod_templates(spec):
        assert pod["serviceAccountName"] == SERVICE_ACCOUNT, group
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            limits, requests = c["resources"]["limits"], c["resources"]["requests"]
            assert requests == limits and {"cpu", "memory"} <= set(limits), (group, c["name"])
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert set(mounts.values()) <= set(volumes), group
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", group
        gpu = any("nvidia.com/gpu" in c["resources"]["limits"] for c in pod["containers"])
        tolerations = {t["key"] for t in pod.get("tolerations", [])}
        assert ("nvidia.com/gpu" in tolerations) == gpu, group


def test_kuberay_prereqs_give_the_pods_their_identity_and_volume() -> None:
    docs = {d["kind"]: d for d in kuberay_docs()["prereqs.yaml"]}
    account = docs["ServiceAccount"]
    assert account["metadata"]["name"] == SERVICE_ACCOUNT
    annotations = account["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::ACCOUNT_ID:role/")
    assert annotations["iam.gke.io/gcp-service-account"].endswith("@PROJECT_ID.iam.gserviceaccount.com")
    claim = docs["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for _, pod in pod_templates(raycluster_spec())
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {claim["metadata"]["name"]}
    exposed = [d for docs in kuberay_docs().values() for d in docs if d["kind"] in ("Service", "Ingress", "Secret")]
    assert not exposed  # no Service of ours (LoadBalancer/NodePort), no Ingress, no Secret in a file


def test_kuberay_job_entrypoint_parses_with_the_job_and_versions_match() -> None:
    spec = load(KUBERAY / "build-objaverse.yaml")
    assert spec["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    argv = shlex.split(spec["spec"]["entrypoint"])
    assert argv[:2] == ["python", "/app/jobs/build_dataset.py"]
    _, cfg = parse_job(argv)
    assert cfg.source.kind == "objaverse" and cfg.source.lvis == "exclude"
    assert cfg.resources.embed_worker_gpus == 1 and not cfg.resources.check_fits
    assert cfg.teacher.startswith("openclip:EVA02-E-14-plus@")


def test_kuberay_job_chain_fits_the_cluster_and_reads_what_the_last_job_wrote() -> None:
    spec = raycluster_spec()
    groups = spec["workerGroupSpecs"]
    gpus = sum(g["maxReplicas"] * gpus_per_pod(g) for g in groups)
    cpus = sum(
        g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) for g in groups
    )
    mounts = mount_paths(spec)
    cfgs = {}
    for job in rayjobs().values():
        argv = shlex.split(job["spec"]["entrypoint"])
        name, cfgs[name] = parse_job(argv)
        for path in job_paths(argv):  # every node-local path is on a volume all pods mount
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (name, path)
    build, train, sweep, evaluate = (cfgs[k] for k in ("build_dataset", "pretrain", "sweep", "evaluate"))
    assert build.resources.embed_workers * build.resources.embed_worker_gpus <= gpus
    assert build.resources.shape_workers * build.resources.shape_worker_cpus < cpus
    assert train.data == sweep.data == build.output and "://" in build.output  # object storage
    assert train.use_gpu and train.num_workers <= gpus
    assert sweep.train["num_workers"] <= gpus
    for value in [v for axis in sweep.space.values() if isinstance(axis, list) for v in axis if isinstance(v, str)]:
        for path in LOCAL_PATH.findall(value):
            assert any(path.startswith(m + "/") for m in mounts), path
    assert evaluate.checkpoint == f"{train.storage}/{train.name}/final"
    assert evaluate.use_gpu and evaluate.num_workers <= gpus


# --- everything together --------------------------------------------------------------------------------------


def test_every_config_names_the_one_image_built_from_the_dockerfile() -> None:
    images = set()
    for name in LAUNCHERS:
        docker = load(CLUSTER / name)["docker"]
        images |= {docker[k] for k in ("image", "head_image", "worker_image") if k in docker}
    spec = raycluster_spec()
    for job in rayjobs().values():
        for s in (spec, job["spec"]["rayClusterSpec"]):
            images |= {c["image"] for _, pod in pod_templates(s) for c in pod["containers"]}
            images |= {s.get("autoscalerOptions", {}).get("image")} - {None}
    (image,) = images
    assert image.rsplit(":", 1)[1] == ray.__version__
    readme = README.read_text()
    assert f"docker build -t {image} ." in readme and f"docker push {image}" in readme
    assert f"docker build -t {image} ." in DOCKERFILE.read_text()


def test_readme_covers_every_file_placeholder_and_job() -> None:
    readme = README.read_text()
    for name in LAUNCHERS:
        assert f"ray up cluster/{name}" in readme and f"ray dashboard cluster/{name}" in readme
    for path in KUBERAY.glob("*.yaml"):
        assert f"cluster/kuberay/{path.name}" in readme, path.name
    assert "ray get-auth-token" in readme and "kubectl port-forward" in readme and "RAY_AUTH_MODE=token" in readme
    texts = [DOCKERFILE.read_text()] + [p.read_text() for p in CLUSTER.rglob("*.yaml")]
    used = {p for p in PLACEHOLDERS if any(re.search(rf"\b{p}\b", t) for t in texts)}
    assert used == set(PLACEHOLDERS)
    assert all(f"`{p}`" in readme for p in used)


def test_readme_job_commands_parse_with_the_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # relative paths (configs/...) as `ray job submit --working-dir .` ships them
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [ln.strip() for b in blocks for ln in re.sub(r"\\\n\s*", " ", b).splitlines()]
    submits = [ln.split(" -- ", 1)[1] for ln in lines if ln.startswith("ray job submit ")]
    jobs = {parse_job(shlex.split(re.sub(r"\s+#.*$", "", s)))[0] for s in submits}
    assert jobs == JOBS


def test_no_credentials_in_any_cluster_file() -> None:
    files = [DOCKERFILE, ROOT / ".dockerignore"] + [p for p in CLUSTER.rglob("*") if p.is_file()]
    forbidden = [
        r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
        r"(?i)aws_secret_access_key|secret_access_key|aws_session_token",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        r'"private_key"|ssh_private_key|gcp_credentials',
        r"RAY_AUTH_TOKEN=(?!\$)\S",  # a token written into a file
        r"(?i)password\s*[:=]\s*\S",
    ]
    for path in files:
        text = path.read_text()
        for pattern in forbidden:
            assert not re.search(pattern, text), (path.name, pattern)

    def dicts(node):
        if isinstance(node, dict):
            yield node
        for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else []:
            yield from dicts(child)

    for name, docs in kuberay_docs().items():  # a token in a manifest could only come from a Secret reference
        assert not [d for d in dicts(docs) if d.get("name") == "RAY_AUTH_TOKEN" and "value" in d], name
