"""Checkpoints and teachers named on the Hugging Face Hub (``hf-hub:``), offline: each test fills a cache folder in
the hub's own layout (``models--<org>--<repo>/refs/<revision>`` -> ``snapshots/<commit>/<files>``) and points
huggingface_hub at it, with ``HF_HUB_OFFLINE=1`` as in the whole suite, so nothing is fetched."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import SHARED, error_line

import uni3d
from pipelines.storage import local_copy, local_init
from uni3d.hub import hub_path, parse_hub

Put = Callable[..., Path]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Put:
    """``put(repo_id, {path in the repo: source file or folder}, revision="main")``: the files in the cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def put(repo_id: str, files: dict[str, Path], revision: str = "main") -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        commit = f"{abs(hash((repo_id, revision))):040x}"[:40]
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
        snapshot = repo / "snapshots" / commit
        for name, source in files.items():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy)(source, snapshot / name)
        return snapshot

    return put


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An official-layout ``model.pt`` of the tiny preset and one of our checkpoint folders (nano)."""
    folder = tmp_path_factory.mktemp("released")
    official = uni3d.export_official(uni3d.create_model("tiny"), folder / "model.pt")
    ours = uni3d.save_checkpoint(
        uni3d.create_model("nano", embed_dim=384), folder / "ours", meta={"teacher": "minilm:all-MiniLM-L6-v2"}
    )
    return official, ours


def test_names_parse_into_repository_path_and_revision() -> None:
    ref = parse_hub("hf-hub:BAAI/Uni3D/modelzoo/uni3d-g/model.pt")
    assert (ref.repo_id, ref.path, ref.revision, ref.is_file) == ("BAAI/Uni3D", "modelzoo/uni3d-g/model.pt", None, True)
    ref = parse_hub("hf-hub:me/runs/nano@v2")
    assert (ref.repo_id, ref.path, ref.revision, ref.is_file) == ("me/runs", "nano", "v2", False)
    for bad in ("hf-hub:BAAI", "hf-hub:BAAI/Uni3D@", "BAAI/Uni3D/model.pt"):
        with pytest.raises(ValueError, match="hf-hub:<org>/<repo>"):
            parse_hub(bad)


def test_an_official_file_and_a_folder_of_ours_load_from_the_hub_cache(hub_cache: Put, released) -> None:
    official, ours = released
    hub_cache("BAAI/Uni3D", {"modelzoo/uni3d-ti/model.pt": official})
    hub_cache("me/uni3d-runs", {"nano/model.safetensors": ours / "model.safetensors"}, revision="v1")
    hub_cache("me/uni3d-runs", {"nano": ours})  # main: the whole folder
    model = uni3d.load_checkpoint("hf-hub:BAAI/Uni3D/modelzoo/uni3d-ti/model.pt")
    want = torch.load(official, weights_only=True)["module"]
    assert all(torch.equal(v.half(), want[k]) for k, v in model.state_dict().items())
    mine = uni3d.load_checkpoint("hf-hub:me/uni3d-runs/nano")
    assert mine.embed_dim == 384 and mine.cfg.width == 64
    config = uni3d.read_checkpoint_config("hf-hub:me/uni3d-runs/nano")
    assert config["meta"]["teacher"] == "minilm:all-MiniLM-L6-v2"
    # a revision without config.json is not a checkpoint folder of ours: the error names the missing file
    with pytest.raises(FileNotFoundError, match="nano/config.json of me/uni3d-runs is not in the Hugging Face cache"):
        uni3d.load_checkpoint("hf-hub:me/uni3d-runs/nano@v1")
    with local_copy("hf-hub:me/uni3d-runs/nano") as folder:  # what the jobs and the Ray actors read
        assert folder == hub_path("hf-hub:me/uni3d-runs/nano") and (folder / "config.json").is_file()
    # a run may start from a hub checkpoint (init=run:hf-hub:...): resolved to the cached folder, checked
    with local_init(uni3d.parse_init("run:hf-hub:me/uni3d-runs/nano")) as init:
        assert Path(init.path) == hub_path("hf-hub:me/uni3d-runs/nano")
        assert "loaded strictly" in uni3d.check_init(init, uni3d.get_preset("nano", embed_dim=384))


def test_a_name_that_is_not_in_the_cache_is_one_clear_error(hub_cache: Put, capsys, tmp_path: Path) -> None:
    from jobs.classify import main as classify
    from jobs.evaluate import main as evaluate

    with pytest.raises(
        FileNotFoundError, match="model.pt of BAAI/Uni3D is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    ):
        uni3d.load_checkpoint("hf-hub:BAAI/Uni3D/modelzoo/uni3d-g/model.pt")
    mesh = SHARED / "meshes" / "real" / "cow.off"
    name = "hf-hub:BAAI/Uni3D/modelzoo/uni3d-g/model.pt"
    assert classify(["--checkpoint", name, "--mesh", str(mesh), "--labels", "cow,chair"]) == 2
    assert "not in the Hugging Face cache" in error_line(capsys)
    assert evaluate(["--checkpoint", name, "--out", str(tmp_path / "reports")]) == 2
    assert "not in the Hugging Face cache" in error_line(capsys)


def test_classify_and_evaluate_take_a_hub_checkpoint(hub_cache: Put, released, capsys, tmp_path: Path) -> None:
    from jobs.classify import main as classify
    from pipelines.evaluate.config import EvalConfig
    from pipelines.evaluate.run import report_location
    from pipelines.settings import ConfigError

    hub_cache("me/uni3d-runs", {"nano": released[1]})
    name = "hf-hub:me/uni3d-runs/nano"
    mesh = SHARED / "meshes" / "real" / "cow.off"
    argv = ["--checkpoint", name, "--mesh", str(mesh), "--labels", "cow,chair,lamp", "--num-points", "512"]
    assert classify([*argv, "--json"]) == 0
    assert '"label"' in capsys.readouterr().out
    # the reports of a hub checkpoint cannot go next to it (the hub's cache): --out is asked for
    with pytest.raises(ConfigError, match="on the Hugging Face Hub: give --out DIR"):
        report_location(EvalConfig(checkpoint=name))
    assert report_location(EvalConfig(checkpoint=name, out=str(tmp_path / "r"))).path == str(tmp_path / "r")


def test_an_open_clip_teacher_on_the_hub_embeds_as_the_same_weights_loaded_directly(hub_cache: Put, tmp_path) -> None:
    import json

    import open_clip

    from uni3d.open_clip_weights import TINY_ARCHS
    from uni3d.teachers import RandomOpenClipTeacher

    base, overrides = TINY_ARCHS["tiny-ViT-32"]
    model_cfg = open_clip.get_model_config(base)
    model_cfg = {**model_cfg, **{k: {**model_cfg.get(k, {}), **v} if isinstance(v, dict) else v
                                 for k, v in overrides.items()}}  # fmt: skip
    source = RandomOpenClipTeacher("tiny-ViT-32", seed=3, device="cpu")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(source.model.state_dict(), tmp_path / "repo" / "open_clip_pytorch_model.bin")
    hub_cache(
        "me/tiny-clip", {n: tmp_path / "repo" / n for n in ("open_clip_config.json", "open_clip_pytorch_model.bin")}
    )
    teacher = uni3d.build_teacher("openclip:hf-hub:me/tiny-clip")
    assert (
        teacher.name == "openclip:hf-hub:me/tiny-clip"
        and uni3d.parse_teacher(teacher.name).model == "hf-hub:me/tiny-clip"
    )
    assert teacher.embed_dim == source.embed_dim == 64
    texts = ["a red chair", "a wooden table"]
    assert torch.allclose(
        torch.as_tensor(teacher.encode_text(texts)), torch.as_tensor(source.encode_text(texts)), atol=1e-5
    )
    with pytest.raises(FileNotFoundError, match="me/missing"):
        uni3d.build_teacher("openclip:hf-hub:me/missing")
    with pytest.raises(ValueError, match="openclip:hf-hub:<org>/<repo>"):
        uni3d.parse_teacher("openclip:hf-hub:me")


def test_the_official_recipes_start_from_their_scales_2d_weights_on_the_hub(hub_cache: Put, tmp_path: Path) -> None:
    """docs/method.md §6: each ``uni3d-*`` recipe names its ViT's 2D weights as timm publishes them on the hub."""
    import timm
    from safetensors.torch import save_file

    from pipelines.train.recipes import get_recipe, recipe_names

    for name in [n for n in recipe_names() if n.startswith("uni3d-")]:
        recipe = get_recipe(name)
        spec = uni3d.parse_init(recipe["init"])
        ref = parse_hub(spec.path)
        assert spec.kind == "timm" and not spec.arch and ref.path == "model.safetensors", (name, spec)
        assert ref.repo_id.startswith(f"timm/{uni3d.PRESETS[recipe['model']].timm_model}."), (name, ref)
    official = "timm:hf-hub:timm/eva_giant_patch14_560.m30m_ft_in22k_in1k/model.safetensors"
    assert get_recipe("uni3d-g")["init"] == official  # what the official pretraining script loads
    # the tiny recipe's file in the layout timm publishes it (a feature model: no classifier head) fits the preset
    vit = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "model.safetensors"))
    hub_cache("timm/eva02_tiny_patch14_224.mim_in22k", {"model.safetensors": tmp_path / "model.safetensors"})
    with local_init(uni3d.parse_init(get_recipe("uni3d-ti")["init"])) as init:
        assert Path(init.path).is_file()
        text = uni3d.check_init(init, uni3d.get_preset("tiny", embed_dim=1024))
    assert "tensors fit the ViT of" in text and "tiny" in text, text
