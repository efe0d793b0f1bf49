"""Sweep spaces and their checks, before any trial (no Ray): every bad input is one error line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

import uni3d
from pipelines.build.manifest import Manifest
from pipelines.settings import ConfigError, set_layers
from pipelines.sweep.space import (
    SweepConfig,
    describe_plan,
    fill_templates,
    fit_trials,
    grid_arguments,
    parse_space,
    plan_sweep,
    shown_values,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """A build folder as far as the checks read it: its manifest (384-d MiniLM, 200 shapes)."""
    out = tmp_path / "build"
    out.mkdir()
    manifest = Manifest(teacher="minilm:all-MiniLM-L6-v2", embed_dim=384, num_points=512, num_shapes=200)
    (out / "manifest.json").write_text(manifest.to_json())
    return out


def sweep(build: Path, tmp_path: Path, **fields) -> SweepConfig:
    return SweepConfig(data=str(build), storage=str(tmp_path / "sweeps"), **fields)


def test_lists_are_grid_axes_and_mappings_distributions() -> None:
    axes = parse_space({"model": ["nano", "micro"], "lr": {"loguniform": [1e-4, 1e-2]}}, "f")
    assert [(a.field, a.kind, a.values) for a in axes] == [
        ("model", "grid", ("nano", "micro")),
        ("lr", "loguniform", (1e-4, 1e-2)),
    ]
    assert grid_arguments(["model=nano, micro", "lr=1e-3"]) == {"model": ["nano", "micro"], "lr": ["1e-3"]}
    filled = fill_templates({"init": "run:{sweep}/init/{model}/final"}, {"sweep": "/s", "model": "nano"})
    assert filled == {"init": "run:/s/init/nano/final"}
    # as reports and TensorBoard show it: the trial's fields filled in, the sweep's folders as written
    params, context = {"init": "run:{sweeps}/init/runs/{model}/final", "lr": 1e-3}, {"sweeps": "/s", "model": "nano"}
    assert shown_values(params, context) == {"init": "run:{sweeps}/init/runs/nano/final", "lr": 1e-3}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "the search space is empty"),
        ({"modle": ["nano"]}, r"space\.modle: not a TrainConfig field"),
        ({"name": ["a", "b"]}, r"space\.name: not a TrainConfig field a trial can sweep"),
        ({"model": []}, r"space\.model: an empty list"),
        ({"lr": {"gaussian": [0, 1]}}, r"space\.lr=.*expected a list of values or one of"),
        ({"lr": {"loguniform": [1e-2, 1e-4]}}, "loguniform needs low < high"),
        ({"lr": {"loguniform": [0, 1e-4]}}, "positive bounds"),
        ({"lr": {"uniform": [1]}}, "uniform takes a list of 2 values"),
        ({"lr": {"uniform": ["a", "b"]}}, "bounds must be numbers"),
    ],
)
def test_malformed_spaces_are_refused_naming_the_field(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(space, "the sweep")


def test_every_trial_is_checked_before_any_starts(build: Path, tmp_path: Path) -> None:
    plan = plan_sweep(sweep(build, tmp_path, space={"model": ["nano", "nano-s"], "lr": [1e-3, 3e-3]}), [])
    assert plan.num_trials == 4 and len(plan.by_data) == 1
    assert plan.trial_cpus == pytest.approx(0.05 + 2 * 0.5 + 0.5)  # the cpu recipe: 2 workers x 0.5 + a read task x 0.5
    assert plan.max_steps == (190 // 2 // 16) * 4  # 5% held out, 2 workers x 16, 4 epochs
    cases = [
        ({"model": ["nano", "huge"]}, [], r"model='huge': unknown preset 'huge'"),
        ({"lr": ["fast"]}, [], r"trial lr=fast: lr='fast': Input should be a valid number"),
        ({"epochs": [1, 0]}, [], r"invalid epochs=0"),
        ({"model": ["nano"]}, set_layers(["batch_size=x"]), r"--set batch_size=x: batch_size='x'"),
        ({"init": ["timm:/nowhere/vit.safetensors"]}, [], r"init='timm:/nowhere/vit.safetensors' .*does not exist"),
        ({"lr": [1e-3], "init": ["run:{sweep}/missing/{model}"]}, [], r"init='run:.*missing/micro'"),
    ]
    for space, sets, message in cases:
        with pytest.raises(ConfigError, match=message):
            plan_sweep(sweep(build, tmp_path, space=space), sets)
    with pytest.raises(ConfigError, match="no manifest.json there"):
        plan_sweep(SweepConfig(data=str(tmp_path / "nothing"), space={"lr": [1e-3]}), [])
    with pytest.raises(ConfigError, match="gives two trials the same run folder"):
        plan_sweep(sweep(build, tmp_path, space={"lr": [1e-3, 2e-3]}, run_name="{model}"), [])


def test_trial_resources_the_user_left_to_the_recipe_are_sized_to_the_cluster(build: Path, tmp_path: Path) -> None:
    space = {"model": ["nano-s", "nano"], "lr": [1e-3, 3e-3]}
    cfg = sweep(build, tmp_path, space=space)
    plan = plan_sweep(cfg, [])  # the cpu recipe: 0.05 + 2 workers x 0.5 + data 0.5 = 1.55 CPUs
    assert fit_trials(cfg, [], plan, cpus=2, gpus=0) is None  # fits: nothing changes
    fitted = fit_trials(cfg, [], plan, cpus=1, gpus=0)  # a one-core laptop: the CPU requests shrink
    assert fitted is not None and set(fitted.values) == {"worker_cpus", "data_cpus"}
    after = plan_sweep(cfg, [fitted])
    assert 0.99 <= after.trial_cpus <= 1.0 and after.biggest.num_workers == 2  # the same training, smaller asks
    line = describe_plan(cfg, after, 1, fitted)
    assert line.startswith("1 trial at once, each ") and "sized to the cluster (1 CPUs, 0 GPUs)" in line
    # what the user set stays: only data_cpus is free, and 0.05 + 2 x 0.6 > 1 even with data at nothing
    sets = set_layers(["worker_cpus=0.6"])
    assert fit_trials(cfg, sets, plan_sweep(cfg, sets), cpus=1, gpus=0) is None  # check_resources refuses it
    # GPU trials (the official recipe: 8 workers x 8 CPUs, a GPU each) on one 1-GPU, 16-CPU node; from scratch, as
    # the recipe's 2D weights are base's, not these scales'
    gpu = sweep(build, tmp_path, space=space, recipe="uni3d-b", train={"init": "scratch"})
    fitted = fit_trials(gpu, [], plan_sweep(gpu, []), cpus=16, gpus=1)
    assert fitted is not None and fitted.values["num_workers"] == 1
    after = plan_sweep(gpu, [fitted])
    assert after.trial_gpus == 1 and after.trial_cpus <= 16
    assert after.biggest.worker_cpus == 8.0  # one worker x 8 CPUs fits: its CPUs stay as the recipe gives them
    chosen = sweep(build, tmp_path, space=space, recipe="uni3d-b", train={"num_workers": 4, "init": "scratch"})
    assert fit_trials(chosen, [], plan_sweep(chosen, []), cpus=64, gpus=2) is None  # train: is the user's own


def test_a_timm_file_for_another_preset_is_refused_with_the_preset_it_fits(build: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    vit = uni3d.create_model("nano-l").point_encoder.visual  # nano-l's ViT: width 192, depth 4
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    ok = plan_sweep(sweep(build, tmp_path, space={"model": ["nano-l"], "init": ["scratch", f"timm:{path}"]}), [])
    assert ok.num_trials == 2
    with pytest.raises(ConfigError, match=r"init='timm:.*' for model='nano': .*fits preset"):
        plan_sweep(sweep(build, tmp_path, space={"model": ["nano"], "init": [f"timm:{path}"]}), [])


def test_the_job_says_error_and_exits_2_before_starting_ray(
    build: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobs.sweep
    from jobs.sweep import main

    joined: list[object] = []
    monkeypatch.setattr(jobs.sweep, "connect", lambda *a, **k: joined.append(a))  # the job's only way into Ray

    common = ["--data", str(build), "--storage", str(tmp_path / "s")]
    bad = [
        ([*common], "the search space is empty"),
        ([*common, "--grid", "model=nano,huge"], "unknown preset 'huge'"),
        ([*common, "--grid", "lr"], "must look like key=v1,v2"),
        ([*common, "--grid", "lr=1e-3", "--set", "scheduler=hyperband"], "invalid scheduler='hyperband'"),
        ([*common, "--grid", "lr=1e-3", "--set", "epochs=many"], "--set epochs=many: epochs='many'"),
        (["--data", str(tmp_path / "none"), "--grid", "lr=1e-3"], "no manifest.json there"),
        ([*common, "--space", str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
    ]
    for argv, message in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert joined == []


def test_the_shipped_sweep_files_parse(build: Path, tmp_path: Path, capsys) -> None:
    from jobs.sweep import main

    for name in ("demo", "scale-init", "lr-layer-decay"):
        path = ROOT / "configs" / "sweeps" / f"{name}.yaml"
        assert main(["--space", str(path), "--data", str(build), "--print-config"]) == 0, name
        assert "space:" in capsys.readouterr().out
    # the demo's space checks out apart from its init runs, which jobs/sweep_demo.py makes first
    assert main(["--space", str(ROOT / "configs/sweeps/demo.yaml"), "--data", str(build)]) == 2
    assert "init='run:" in capsys.readouterr().err


def test_lists_become_choices_for_random_and_optuna_search(build: Path, tmp_path: Path) -> None:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from pipelines.sweep.run import _searcher, tune_space

    cfg = sweep(build, tmp_path, space={"model": ["nano", "nano-s"], "lr": {"loguniform": [1e-4, 1e-2]}})
    plan = plan_sweep(cfg, [])
    grid = tune_space(plan, "grid")
    assert grid["model"] == {"grid_search": ["nano", "nano-s"]} and isinstance(grid["lr"], tune.search.sample.Float)
    assert isinstance(tune_space(plan, "optuna")["model"], tune.search.sample.Categorical)
    assert _searcher(cfg) is None and isinstance(_searcher(sweep(build, tmp_path, search="optuna")), OptunaSearch)
