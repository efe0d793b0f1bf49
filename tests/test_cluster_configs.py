"""The cluster files (cluster/) stay in step with the code: their commands parse, their versions match."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import ray
import yaml

from jobs.build_dataset import parse_args

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def test_kuberay_job_entrypoint_parses_with_the_job_and_versions_match() -> None:
    spec = yaml.safe_load((CLUSTER / "kuberay" / "build-objaverse.yaml").read_text())
    assert spec["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    argv = shlex.split(spec["spec"]["entrypoint"])
    assert argv[:2] == ["python", "/app/jobs/build_dataset.py"]
    cfg, _ = parse_args(argv[2:])
    assert cfg.source.kind == "objaverse" and cfg.source.lvis == "exclude"
    assert cfg.resources.embed_worker_gpus == 1 and not cfg.resources.check_fits
    assert cfg.teacher.startswith("openclip:EVA02-E-14-plus@")


def test_launcher_image_and_pins_match_the_project() -> None:
    spec = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert spec["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311")
    pinned = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", CONSTRAINTS.read_text(), flags=re.M))
    pinned = {k.lower().replace("_", "-"): v for k, v in pinned.items()}
    setup = " ".join(spec["setup_commands"])
    named = re.findall(r'"([A-Za-z0-9_\-]+)(?:\[[a-z,]+\])?==([0-9.]+)"', setup)
    assert len(named) >= 4
    for name, version in named:
        assert pinned[name.lower().replace("_", "-")] == version, name
