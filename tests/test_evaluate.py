"""Evaluation: official test files (written here) load and score, exact metrics on Ray Data actors, few-shot
probe, reports next to the checkpoint, clear errors for missing files and mismatched teachers."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_line

import uni3d
from pipelines.build.manifest import Manifest, write_manifest
from pipelines.evaluate.sets import (
    SCANOBJECTNN_CLASSES,
    EvalSet,
    EvalSetError,
    read_benchmark,
    read_modelnet40,
    read_objaverse_lvis,
    read_scanobjectnn,
)
from pipelines.meshes.sampling import sample_points
from pipelines.sources.procedural import make_shape
from uni3d.fewshot import confusion_matrix, draw_shots, few_shot, fit_logistic_regression

CATEGORIES = ["airplane", "chair", "table", "lamp"]


def shape_points(category: str, seed: int, n: int = 512) -> np.ndarray:
    return sample_points(make_shape(category, seed).to_mesh(), n, seed=seed).points  # (n, 6)


def save_object_array(path: Path, items: list) -> None:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    np.save(path, arr, allow_pickle=True)


def write_official(root: Path, per_class: int = 3) -> None:
    """ModelNet40, ScanObjectNN and Objaverse-LVIS test files in the official layouts (docs/method.md §8), small."""
    mn = root / "modelnet40"
    mn.mkdir(parents=True)
    (mn / "modelnet40_shape_names.txt").write_text("\n".join(CATEGORIES) + "\n")
    clouds = [(c, s, shape_points(c, s)) for c in CATEGORIES for s in range(per_class)]
    # as released: rgb 100 on every point (ModelNet40 has no colour), which the official readers divide by 255
    release = [{"xyz": p[:, :3] * 3.0 + 1.0, "rgb": np.full((len(p), 3), 100.0)} for _, _, p in clouds]
    save_object_array(mn / "test_pc.npy", release)
    (mn / "test_split.json").write_text(json.dumps([{"category": c, "name": f"{c}_{s:04d}"} for c, s, _ in clouds]))
    so = root / "scanobjectnn"
    so.mkdir()
    so_classes = {"chair": 4, "table": 9}
    xyz = [shape_points(c, 10 + s)[:, :3] for c in so_classes for s in range(per_class)]
    labels = [so_classes[c] for c in so_classes for _ in range(per_class)]
    np.save(so / "xyz_label.npy", {"xyz": xyz, "label": np.array(labels)}, allow_pickle=True)
    lv = root / "objaverse_lvis"
    (lv / "shapes").mkdir(parents=True)
    lines = []
    for cid, c in enumerate(CATEGORIES):
        for s in range(per_class):
            p = shape_points(c, 20 + s)
            np.save(lv / "shapes" / f"{c}{s}.npy", {"xyz": p[:, :3], "rgb": p[:, 3:]}, allow_pickle=True)
            lines.append(f"{cid},{c},uid-{c}-{s},/shapes/{c}{s}.npy")  # as the released file: a leading '/'
    (lv / "lvis_testset.txt").write_text("\n".join(lines) + "\n")


def test_official_files_read_with_their_colour_rules(tmp_path: Path) -> None:
    write_official(tmp_path)
    mn = read_modelnet40(tmp_path)
    assert mn.class_names == CATEGORIES and len(mn) == 12
    assert mn.items.column("label").to_pylist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    pts = np.frombuffer(mn.items.column("points")[0].as_py(), np.float32).reshape(-1, 6)
    assert np.allclose(np.linalg.norm(pts[:, :3], axis=1).max(), 1.0, atol=1e-5)  # re-normalised
    assert (pts[:, 3:] == np.float32(100 / 255)).all()  # the official readers' input: 100 / 255, not 0.4
    entries = np.load(tmp_path / "modelnet40" / "test_pc.npy", allow_pickle=True)
    save_object_array(tmp_path / "modelnet40" / "test_pc.npy", [{"xyz": e["xyz"]} for e in entries])
    pts = np.frombuffer(read_modelnet40(tmp_path).items.column("points")[0].as_py(), np.float32).reshape(-1, 6)
    assert (pts[:, 3:] == np.float32(0.4)).all()  # an entry without rgb
    save_object_array(tmp_path / "modelnet40" / "test_pc.npy", [{**e, "rgb": e["rgb"] * 3} for e in entries])
    with pytest.raises(EvalSetError, match=r"test_pc.npy \[0\]: rgb must be finite values in \[0, 255\]"):
        read_modelnet40(tmp_path)
    save_object_array(tmp_path / "modelnet40" / "test_pc.npy", list(entries))
    so = read_scanobjectnn(tmp_path)
    assert len(so.class_names) == 15 and so.class_names[4] == "chair" and len(so) == 6
    so_pts = np.frombuffer(so.items.column("points")[0].as_py(), np.float32).reshape(-1, 6)
    assert (so_pts[:, 3:] == np.float32(0.4)).all()  # the release has no rgb: 0.4, as the official reader gives
    data = np.load(tmp_path / "scanobjectnn" / "xyz_label.npy", allow_pickle=True).item()
    np.save(tmp_path / "so.npy", {**data, "rgb": [np.full_like(x, 0.25) for x in data["xyz"]]}, allow_pickle=True)
    (tmp_path / "so.npy").replace(tmp_path / "scanobjectnn" / "xyz_label.npy")
    so_pts = np.frombuffer(read_scanobjectnn(tmp_path).items.column("points")[0].as_py(), np.float32).reshape(-1, 6)
    assert (so_pts[:, 3:] == np.float32(0.25)).all()  # a file with rgb: taken as it is, as the official reader does
    lv = read_objaverse_lvis(tmp_path)
    assert lv.class_names == CATEGORIES and lv.items.column("uid")[0].as_py() == "uid-airplane-0"
    from pipelines.evaluate.run import _points

    with_colour = _points(lv.items.slice(0, 2))
    assert with_colour.shape == (2, 512, 6) and not (with_colour[..., 3:] == np.float32(0.4)).all()


def test_class_names_are_prompted_as_the_official_labels_json_spells_them(tmp_path: Path) -> None:
    """Uni3D's data/labels.json: LVIS names verbatim, ModelNet40's cleaned, ScanObjectNN's as listed."""
    write_official(tmp_path, per_class=1)
    lv = tmp_path / "objaverse_lvis"
    names = ["Band_Aid", "bat_(animal)", "monitor_(computer_equipment) computer_monitor", "lamp"]
    rows = [f"{i},{n},uid-{i},shapes/{c}0.npy" for i, (n, c) in enumerate(zip(names, CATEGORIES, strict=True))]
    (lv / "lvis_testset.txt").write_text("\n".join(rows) + "\n")
    lvis = read_objaverse_lvis(tmp_path)
    assert lvis.class_names == names and lvis.prompts == names  # underscores and parentheses kept
    mn = tmp_path / "modelnet40"
    (mn / "modelnet40_shape_names.txt").write_text("\n".join([*CATEGORIES, "flower_pot", "tv_stand"]) + "\n")
    modelnet = read_modelnet40(tmp_path)
    assert modelnet.class_names[-2:] == ["flower_pot", "tv_stand"]  # as the shape-names file has them
    assert modelnet.prompts == [*CATEGORIES, "flower pot", "tv stand"]  # as labels.json has them
    assert read_scanobjectnn(tmp_path).prompts == SCANOBJECTNN_CLASSES
    build = EvalSet("build", ["wine_bottle", "chair"], modelnet.items)
    assert build.prompts == ["wine_bottle", "chair"]  # a build's categories as written, as in training
    (mn / "modelnet40_shape_names.txt").write_text("\n".join([*CATEGORIES, "sofa_bed"]) + "\n")
    with pytest.raises(EvalSetError, match=r"\['sofa_bed'\] are not ModelNet40 shape names"):
        read_modelnet40(tmp_path)  # labels.json has no spelling for it


def test_missing_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(EvalSetError, match=r"ModelNet40: missing file .*modelnet40_shape_names.txt"):
        read_benchmark("modelnet40", tmp_path)
    with pytest.raises(EvalSetError, match="unknown benchmark 'modelnet10'"):
        read_benchmark("modelnet10", tmp_path)
    write_official(tmp_path, per_class=1)
    (tmp_path / "objaverse_lvis" / "lvis_testset.txt").write_text("0,chair,uid-x,shapes/nothing.npy\n")
    with pytest.raises(EvalSetError, match=r"lvis_testset.txt:1: missing file .*nothing.npy"):
        read_objaverse_lvis(tmp_path)
    (tmp_path / "modelnet40" / "test_split.json").write_text(json.dumps([{"category": "sofa"}] * 4))
    with pytest.raises(EvalSetError, match=r"test_split.json \[0\]: category .*'sofa'.* not in the shape names"):
        read_modelnet40(tmp_path)
    (tmp_path / "modelnet40" / "test_pc.npy").write_bytes(b"not a pickle")  # the loader's message, as a job error
    with pytest.raises(EvalSetError, match=r"modelnet40/test_pc.npy: not a .npy file"):
        read_benchmark("modelnet40", tmp_path)


def test_logistic_regression_matches_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = rng.integers(0, 3, 60)
    w = fit_logistic_regression(torch.from_numpy(x), torch.from_numpy(y), 3).numpy()
    ref = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(x, y)
    ours = (np.c_[x, np.ones(60)] @ w).argmax(1)
    assert (ours == ref.predict(x)).mean() == 1.0
    probs = np.exp(np.c_[x, np.ones(60)] @ w)
    assert np.allclose(probs / probs.sum(1, keepdims=True), ref.predict_proba(x), atol=1e-3)


def test_few_shot_on_separable_embeddings_and_the_confusion_matrix() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 32)) * 3
    labels = np.repeat(np.arange(5), 20)
    emb = centres[labels] + rng.normal(size=(100, 32))
    res = few_shot(emb, labels, shots=(1, 4), seeds=3)
    assert [r.shots for r in res] == [1, 4] and all(len(r.runs) == 3 for r in res)
    assert res[1].mean > 95 and res[0].classes == 5 and res[1].test_samples == 80
    assert confusion_matrix([0, 1, 1], [0, 1, 0], 2).tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="20-shot leaves no sample to test"):
        few_shot(emb, labels, shots=(20,), seeds=1)
    with pytest.raises(ValueError, match="at least two classes with 21 or more samples, found 0"):
        few_shot(emb, labels, shots=(21,), seeds=1)


def test_few_shot_draws_k_per_class_from_the_set_itself_and_tests_on_the_rest() -> None:
    """OpenShape (issue #17 of its code): k shapes per category of the test set train, the rest test."""
    labels = np.array([0] * 10 + [1] * 4 + [2] * 2)  # class 1 has exactly k = 4, class 2 fewer
    train, test, classes = draw_shots(labels, 4, seed=0)
    assert classes.tolist() == [0, 1]
    assert np.bincount(labels[train.numpy()], minlength=3).tolist() == [4, 4, 0]
    assert sorted(train.tolist() + test.tolist()) == list(range(14))  # class 2's rows are in neither
    assert labels[test.numpy()].tolist() == [0] * 6  # class 1 tests nothing but is one of the probe's classes
    assert draw_shots(labels, 4, seed=1)[0].tolist() != train.tolist()  # each seed draws anew
    emb = np.eye(3)[labels] + 0.01 * np.random.default_rng(0).normal(size=(16, 3))
    (res,) = few_shot(emb, labels, shots=(4,), seeds=2)
    assert (res.classes, res.skipped_classes, res.test_samples) == (2, 1, 6)


def test_few_shot_probes_the_embeddings_as_the_encoder_returns_them() -> None:
    """Two classes along one direction that differ only in norm: an L2-normalised probe could not tell them."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 12)
    direction = np.ones(8) / np.sqrt(8)
    emb = np.where(labels[:, None] == 0, 1.0, 3.0) * direction + 0.01 * rng.normal(size=(24, 8))
    (res,) = few_shot(emb, labels, shots=(4,), seeds=3)
    assert res.runs == [100.0, 100.0, 100.0]


def test_few_shot_runs_are_scikit_learns_logistic_regression_on_the_same_draws() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 15)
    emb = rng.normal(size=(3, 6))[labels] * 2 + rng.normal(size=(45, 6))  # overlapping classes
    (res,) = few_shot(emb, labels, shots=(4,), seeds=3)
    for seed, acc in enumerate(res.runs):
        train, test, _ = draw_shots(labels, 4, seed)
        ref = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(emb[train.numpy()], labels[train.numpy()])
        assert acc == pytest.approx(100.0 * ref.score(emb[test.numpy()], labels[test.numpy()]))
    assert res.mean == pytest.approx(np.mean(res.runs)) and res.mean < 100  # the classes do overlap


def test_the_report_states_the_few_shot_protocol_and_what_was_left_out(tmp_path: Path) -> None:
    from pipelines.evaluate.run import SetResult, write_reports

    (fs,) = few_shot(np.eye(3)[[0, 0, 0, 1, 1, 1, 2]], np.array([0, 0, 0, 1, 1, 1, 2]), shots=(2,), seeds=2)
    result = SetResult("toy", 7, 3, 33.3, 50.0, 100.0, 100.0, 50.0, {"a": 50.0}, few_shot=[asdict(fs)])
    write_reports(tmp_path, result, np.eye(3, dtype=np.int64), ["a", "b", "c"], {"checkpoint": "c", "teacher": "t"})
    report = (tmp_path / "toy.md").read_text()
    assert "OpenShape's protocol (arXiv 2305.10764, §4.2)" in report and "mean ± std over 2 seeds" in report
    assert "| shots | linear probe acc. (mean ± std over seeds) | classes | left out | test shapes |" in report
    assert f"| 2 | {fs.mean:.1f} ± {fs.std:.1f} | 2 | 1 | 2 |" in report


@pytest.mark.ray
@pytest.mark.slow
def test_evaluate_official_sets_with_two_actors_is_exact(all_actors_before_work: None, tmp_path: Path) -> None:
    from jobs.evaluate import main
    from pipelines.evaluate.config import EvalConfig
    from pipelines.evaluate.run import _points, score
    from pipelines.evaluate.sets import read_modelnet40

    write_official(tmp_path / "eval")
    torch.manual_seed(0)
    model = uni3d.create_model("nano", embed_dim=384)
    ckpt = uni3d.save_checkpoint(model, tmp_path / "ckpt", meta={"teacher": "minilm:all-MiniLM-L6-v2"})
    argv = ["--checkpoint", str(ckpt), "--sets", "modelnet40", "scanobjectnn", "objaverse_lvis"]
    argv += ["--root", str(tmp_path / "eval"), "--set", "num_workers=2", "--set", "worker_cpus=0.5"]
    argv += ["--set", "batch_size=5", "--few-shot", "--set", "shots=[1]", "--set", "seeds=2"]
    assert main(argv) == 0
    for name in ("modelnet40", "scanobjectnn", "objaverse_lvis"):
        report = json.loads((ckpt / "eval" / f"{name}.json").read_text())
        assert 0 <= report["top1"] <= report["top3"] <= report["top5"] <= 100
        assert (ckpt / "eval" / f"{name}.md").read_text().startswith(f"# Zero-shot: {name}")
        assert (ckpt / "eval" / f"{name}_confusion.png").stat().st_size > 1000
        # planned blocks as the build's (a divisor of batch_size, 8 per actor wanted: one shape each for these
        # small sets), one task each (Ray Data's
        # own count), and both actors embedded some
        plan, shares = report["meta"]["plan"], report["meta"]["rows_by_worker"]
        assert 5 % plan["rows_per_block"] == 0 and plan["num_blocks"] >= min(16, plan["total"]), plan
        stats = (ckpt / "eval" / f"{name}-ray-data.txt").read_text()
        assert f"MapBatches(PointEmbedder): {plan['num_blocks']} tasks executed" in stats, stats[:2000]
        assert len(shares) == 2 and sum(shares.values()) == report["num_samples"], shares
    # the same numbers as one process embedding everything at once
    es = read_modelnet40(tmp_path / "eval")
    with torch.no_grad():
        emb = model.eval().encode_pc(torch.from_numpy(_points(es.items))).numpy()
    classifier = uni3d.build_zero_shot_classifier(uni3d.MiniLMTeacher(), es.prompts)
    want, _ = score(es, emb, es.items.column("label").to_numpy(), classifier, EvalConfig(checkpoint=""))
    got = json.loads((ckpt / "eval" / "modelnet40.json").read_text())
    assert (got["top1"], got["top3"], got["num_samples"]) == (want.top1, want.top3, 12)


@pytest.mark.ray
def test_a_teacher_of_another_dimension_and_a_missing_checkpoint_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from jobs.evaluate import main

    write_official(tmp_path / "eval", per_class=1)
    ckpt = uni3d.save_checkpoint(uni3d.create_model("nano", embed_dim=384), tmp_path / "ckpt")
    argv = ["--checkpoint", str(ckpt), "--root", str(tmp_path / "eval"), "--teacher", "openclip-random:tiny-ViT-32"]
    assert main(argv) == 2
    assert "embeds class names in 64 dimensions but the checkpoint's embeddings have 384" in error_line(capsys)
    assert main(["--checkpoint", str(ckpt), "--root", str(tmp_path / "eval")]) == 2
    assert "does not record its teacher: pass --teacher" in error_line(capsys)
    assert main(["--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert re.search("checkpoint .*nowhere does not exist", error_line(capsys))
    # a build in which every shape failed: one line naming it and its failures, not a traceback from Ray Data
    empty = tmp_path / "empty_build"
    (empty / "shards").mkdir(parents=True)
    write_manifest(
        empty / "manifest.json", Manifest(teacher="minilm", embed_dim=384, num_points=512, failures={"load": 3})
    )
    assert main(["--checkpoint", str(ckpt), "--sets", str(empty), "--teacher", "minilm"]) == 2
    assert "empty_build: the build holds no shapes (failures by stage: load 3); nothing to evaluate" in error_line(
        capsys
    )


@pytest.mark.ray
@pytest.mark.slow
def test_an_official_release_file_evaluates_with_the_teacher_given(tmp_path: Path, capsys) -> None:
    from jobs.evaluate import main

    write_official(tmp_path / "eval", per_class=1)
    official = uni3d.export_official(uni3d.create_model("tiny", embed_dim=384), tmp_path / "uni3d-ti" / "model.pt")
    argv = ["--checkpoint", str(official), "--sets", "modelnet40", "--root", str(tmp_path / "eval")]
    assert main(argv) == 2
    assert "does not record its teacher: pass --teacher" in capsys.readouterr().err
    assert main([*argv, "--teacher", "minilm", "--set", "batch_size=2"]) == 0
    report = json.loads((tmp_path / "uni3d-ti" / "eval" / "modelnet40.json").read_text())
    assert report["num_samples"] == 4 and report["meta"]["teacher"] == "minilm"


def test_reports_go_next_to_the_checkpoint_only_when_its_folder_is_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import ray

    from jobs.evaluate import main
    from pipelines.evaluate import run as evaluation
    from pipelines.evaluate.config import EvalConfig

    ckpt = uni3d.save_checkpoint(uni3d.create_model("nano", embed_dim=384), tmp_path / "release")
    cfg = EvalConfig(checkpoint=str(ckpt))
    assert evaluation.report_location(cfg).path == str(ckpt / "eval")
    monkeypatch.setattr(evaluation, "_writable", lambda path: False)  # a read-only volume (chmod means nothing to root)
    started = ray.is_initialized()
    assert main(["--checkpoint", str(ckpt), "--sets", "modelnet40"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: the checkpoint's folder {ckpt} is not writable: give --out DIR for the reports"]
    assert ray.is_initialized() == started  # refused before Ray starts
    cfg = EvalConfig(checkpoint=str(ckpt), out=str(tmp_path / "reports"))
    assert evaluation.report_location(cfg).path == str(tmp_path / "reports")
