"""The typed configuration layer: values checked against field types, config files, --print-config, --help."""

from __future__ import annotations

import pytest

from pipelines.build.config import BuildConfig
from pipelines.settings import ConfigError, Layer, apply_overrides, file_layer, resolve, set_layers
from pipelines.train.config import TrainConfig, make_config
from pipelines.train.recipes import get_recipe, recipe_names


def build_config(*sets: str) -> BuildConfig:
    return resolve(BuildConfig, [Layer("flags", {"output": "out"}), *set_layers(list(sets))])


def test_values_are_parsed_by_the_type_of_their_field() -> None:
    cfg = build_config("resources.check_fits=no", "num_points=2048", "shard=1/4", "source.categories=[chair, table]")
    assert cfg.resources.check_fits is False and cfg.num_points == 2048 and cfg.shard == "1/4"
    assert cfg.source.categories == ["chair", "table"]
    assert build_config("source.root=007").source.root == "007"  # a string field keeps the text as written
    assert build_config("limit=null").limit is None and build_config("limit=5").limit == 5
    assert build_config("resources.object_store_gib=1").resources.object_store_gib == 1.0


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("num_points=abc", r"--set num_points=abc: num_points='abc': Input should be a valid integer"),
        ("resources.check_fits=maybe", r"resources\.check_fits='maybe': Input should be a valid boolean"),
        ("num_points=2.5", r"num_points=2\.5: .*fractional part"),
        ("source.nshapes=3", r"SourceConfig has no field 'source\.nshapes'; did you mean num_shapes\?"),
        ("resources=4", r"'resources' is a section"),
        ("rows_per_shard=0", r"rows_per_shard must be >= 1, got 0"),
        ("oops", r"must look like key=value"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_item_field_and_value(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_config(item)
    assert "\n" not in str(info.value)


def test_apply_overrides_validates_too() -> None:
    cfg = BuildConfig(output="x")
    assert apply_overrides(cfg, ["resources.shape_workers=3"]).resources.shape_workers == 3
    with pytest.raises(ConfigError, match="shape_workers='three'"):
        apply_overrides(cfg, ["resources.shape_workers=three"])


def test_recipes_are_yaml_files_that_inherit() -> None:
    assert {"cpu", "uni3d-ti", "uni3d-s", "uni3d-b", "uni3d-l", "uni3d-g"} <= set(recipe_names())
    assert "_official" not in recipe_names()  # a base, not a recipe
    b = get_recipe("uni3d-b")
    assert b["model"] == "base" and b["batch_size"] == 48 and b["warmup_steps"] == 10_000 and "inherit" not in b
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        make_config("d", "nope")


def test_print_config_output_runs_again_as_a_config_file(tmp_path, capsys) -> None:
    from jobs.pretrain import main, parse_args

    assert main(["--data", "d", "--recipe", "uni3d-b", "--set", "epochs=3", "--print-config"]) == 0
    saved = tmp_path / "run.yaml"
    saved.write_text(capsys.readouterr().out)
    first, _ = parse_args(["--data", "d", "--recipe", "uni3d-b", "--set", "epochs=3"])
    again, _ = parse_args(["--config", str(saved)])
    assert again == first and again.epochs == 3 and again.model == "base"
    later, _ = parse_args(["--config", str(saved), "--set", "lr=3e-4"])  # --set wins over the file
    assert later.lr == 3e-4 and later.epochs == 3


def test_jobs_say_error_and_exit_2_on_bad_configuration(tmp_path, capsys) -> None:
    from jobs.build_dataset import main as build
    from jobs.evaluate import main as evaluate
    from jobs.pretrain import main as pretrain

    assert build(["--out", str(tmp_path), "--set", "num_points=abc"]) == 2
    assert capsys.readouterr().err.startswith("error: --set num_points=abc: num_points='abc'")
    assert build(["--set", "num_points=5"]) == 2
    assert "output is required: give --out" in capsys.readouterr().err
    assert pretrain(["--data", "d", "--set", "strategy=fsdp"]) == 2
    assert "invalid strategy='fsdp'" in capsys.readouterr().err
    assert pretrain(["--set", "epochs=2"]) == 2
    assert "data is required" in capsys.readouterr().err
    assert evaluate(["--checkpoint", "c", "--set", "num_workers=two"]) == 2
    assert "num_workers='two'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    assert pretrain(["--config", str(bad)]) == 2
    assert f"{bad}: not valid YAML" in capsys.readouterr().err


def test_every_job_names_a_missing_input_in_one_error_line_and_exits_2(tmp_path, capsys) -> None:
    import ray

    from jobs.classify import main as classify
    from jobs.embed import main as embed
    from jobs.pretrain import main as pretrain
    from jobs.search import main as search

    nowhere = str(tmp_path / "nowhere")
    mesh = tmp_path / "m.off"
    mesh.write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    empty = tmp_path / "empty.obj"
    empty.write_bytes(b"")
    junk = tmp_path / "model.pt"  # a file given as a checkpoint that is none
    junk.write_bytes(b"not a checkpoint")
    cases = [
        (classify, ["--checkpoint", nowhere, "--mesh", str(mesh), "--labels", "a,b"], f"checkpoint {nowhere} does not"),
        (classify, ["--checkpoint", nowhere, "--mesh", str(mesh)], "the label list is empty"),
        (classify, ["--checkpoint", nowhere, "--mesh", str(mesh), "--labels-file", nowhere], "labels file"),
        # a query mesh that cannot be read, or a folder: named, before the checkpoint is looked at
        (classify, ["--checkpoint", nowhere, "--mesh", str(empty), "--labels", "a,b"], f"{empty}: empty file"),
        (classify, ["--checkpoint", nowhere, "--mesh", str(tmp_path), "--labels", "a,b"], "not a regular file"),
        (classify, ["--checkpoint", str(junk), "--mesh", str(mesh), "--labels", "a,b"], f"{junk}: not a readable"),
        (search, ["--gallery", nowhere, "--text", "a chair"], "no gallery shards"),
        (pretrain, ["--data", str(tmp_path), "--storage", nowhere], f"{tmp_path}: not a build (no manifest.json"),
        (embed, ["--checkpoint", nowhere, "--root", str(tmp_path), "--out", str(tmp_path / "g")], "does not exist"),
    ]
    started = ray.is_initialized()
    for job, argv, message in cases:
        assert job(argv) == 2, argv
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
    assert ray.is_initialized() == started  # refused before any Ray starts


def test_every_job_takes_a_log_level_and_refuses_an_unknown_one(capsys) -> None:
    import importlib

    for name in ("build_dataset", "pretrain", "evaluate", "embed", "sweep", "classify", "search", "demo"):
        job = importlib.import_module(f"jobs.{name}")
        with pytest.raises(SystemExit) as info:
            job.main(["--log-level", "loud"])
        assert info.value.code == 2, name
        assert "--log-level: invalid choice: 'LOUD'" in capsys.readouterr().err, name


def test_help_lists_every_field_with_its_type_default_and_comment(capsys) -> None:
    from jobs.build_dataset import main as build

    with pytest.raises(SystemExit):
        build(["--help"])
    text = capsys.readouterr().out
    assert "resources.check_fits (bool, default True): Refuse to start" in text
    assert "source.num_shapes (int, default 240)" in text and "--print-config" in text


def test_a_train_config_file_may_set_any_field(tmp_path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("data: build\nmodel: nano\nlr: 3.0e-4\ninit: scratch\n")
    cfg = resolve(TrainConfig, [file_layer(path)])
    assert (cfg.data, cfg.model, cfg.lr) == ("build", "nano", 3e-4)
    path.write_text("data: build\nlrate: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}: TrainConfig has no field 'lrate'; did you mean lr"):
        resolve(TrainConfig, [file_layer(path)])


def test_a_section_keeps_its_own_default_under_the_values_set_for_it() -> None:
    from jobs.embed import parse_args

    # EmbedConfig's source defaults to kind=local (a folder of meshes), not SourceConfig's procedural
    cfg, _ = parse_args(["--checkpoint", "ckpt", "--root", "meshes", "--set", "source.category_from=parent"])
    assert (cfg.source.kind, cfg.source.root, cfg.source.category_from) == ("local", "meshes", "parent")
    cfg, _ = parse_args(["--checkpoint", "ckpt", "--set", "source.kind=procedural", "--set", "num_points=512"])
    assert (cfg.source.kind, cfg.num_points, cfg.output) == ("procedural", 512, "data/gallery")
