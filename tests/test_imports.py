"""What importing the library costs: `import uni3d` and the modules data workers import do not pull in the ViT
stack (timm, torchvision), which only building a model needs; the public names still resolve on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import uni3d


def test_the_package_and_its_data_side_modules_do_not_import_timm() -> None:
    code = "import sys, uni3d, uni3d.teachers, uni3d.zeroshot, uni3d.presets; print('timm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_the_pretraining_driver_does_not_import_the_model() -> None:
    # a run's driver, and every trial of a sweep, plans and starts Ray Train; only its workers build the model
    code = "import sys, pipelines.train.driver, pipelines.sweep.run; print('timm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_the_offline_teacher_loads_without_transformers() -> None:
    # every build's embedding actor loads it: transformers' modelling code was ~3 s of CPU there (uni3d.minilm)
    code = "import sys, uni3d; uni3d.build_teacher('minilm'); print('transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_every_public_name_resolves() -> None:
    assert set(uni3d.__all__) <= set(dir(uni3d))
    for name in uni3d.__all__:
        assert getattr(uni3d, name) is not None, name
    assert uni3d.create_model("nano", embed_dim=384).embed_dim == 384
    with pytest.raises(AttributeError, match="no_such_name"):
        uni3d.no_such_name  # noqa: B018


JOBS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "jobs").glob("*.py"))
HEAVY = ("torch", "ray", "timm", "pyarrow.dataset", "deepspeed", "open_clip", "sentence_transformers")


@pytest.mark.parametrize("job", JOBS)
def test_a_jobs_help_shows_its_examples_and_imports_nothing_heavy(job: str) -> None:
    # --help answers before torch, Ray or the model are imported (bench/cli.py times it)
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['jobs/{job}', '--help']\n"
        "try:\n"
        f"    runpy.run_path('jobs/{job}', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        f"print('imported:', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("imported: []"), done.stdout[-500:]
    assert "usage: " in done.stdout and "    python jobs/" in done.stdout  # the docstring's examples
    assert "--set" in done.stdout or job in ("classify.py", "search.py")  # the two without config fields


# pipelines/ by stage, bottom to top (README "Layout"): a module imports only its own stage, the stages below it,
# the ground floor (settings, storage, faults, ray_connect) and uni3d; uni3d imports no pipelines and no Ray.
STAGES = ("meshes", "sources", "build", "evaluate", "train", "sweep")


def _imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_pipelines_imports_run_only_down_the_stages_and_uni3d_stays_ray_free() -> None:
    root = Path(__file__).resolve().parents[1]
    upward = []
    for path in sorted((root / "pipelines").rglob("*.py")):
        parts = path.relative_to(root / "pipelines").parts
        level = STAGES.index(parts[0]) if len(parts) > 1 else -1
        for module in _imports(path):
            names = module.split(".")
            if names[0] == "pipelines" and len(names) > 1 and names[1] in STAGES and STAGES.index(names[1]) > level:
                upward.append(f"{path.relative_to(root)} imports {module}")
    assert not upward, upward
    flat = [p.name for p in (root / "pipelines").glob("*.py")]
    assert sorted(flat) == ["__init__.py", "faults.py", "ray_connect.py", "settings.py", "storage.py"]
    library = [(p.name, m) for p in (root / "uni3d").rglob("*.py") for m in _imports(p)]
    assert not [(f, m) for f, m in library if m.split(".")[0] in ("pipelines", "ray", "jobs")]
