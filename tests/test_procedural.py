"""Procedural shapes: categories, determinism, texts, mesh validity, GLB round trip, separability."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pipelines.sources.procedural import generate, make_shape
from pipelines.sources.procedural_categories import CATEGORIES, PALETTE


def test_at_least_twelve_distinct_categories() -> None:
    assert len(CATEGORIES) >= 12 and len(set(CATEGORIES)) == len(CATEGORIES)
    assert all(re.fullmatch(r"[a-z]+", c) for c in CATEGORIES)
    with pytest.raises(ValueError, match="unknown category"):
        make_shape("spaceship", 0)


@pytest.mark.parametrize("category", CATEGORIES)
def test_deterministic_per_seed_and_varied_across_seeds(category: str) -> None:
    a, b, c = make_shape(category, 7), make_shape(category, 7), make_shape(category, 8)
    ma, mb, mc = a.to_mesh(), b.to_mesh(), c.to_mesh()
    assert np.array_equal(ma.vertices, mb.vertices) and np.array_equal(ma.faces, mb.faces)
    assert np.array_equal(ma.face_colors, mb.face_colors)
    assert (a.caption, a.texts, a.attributes, a.uid) == (b.caption, b.texts, b.attributes, b.uid)
    extent = lambda m: np.ptp(m.vertices[m.faces.ravel()], axis=0)  # noqa: E731
    assert not np.allclose(extent(ma), extent(mc), rtol=1e-3), "seeds 7 and 8 give the same proportions"


@pytest.mark.parametrize("category", CATEGORIES)
def test_captions_and_texts(category: str) -> None:
    for seed in range(5):
        shape = make_shape(category, seed)
        words = re.findall(r"[a-z]+", shape.caption)
        assert category in words and shape.attributes["color"] in words, shape.caption
        assert shape.texts == [shape.caption, f"{shape.attributes['color']} {category}"]
        assert shape.text_groups == [1, 0]  # a caption, a name; never the bare class name (the eval prompt)
        assert shape.uid == f"proc-{category}-{seed}"


@pytest.mark.parametrize("category", CATEGORIES)
def test_meshes_are_valid_coloured_and_y_up(category: str) -> None:
    mesh = make_shape(category, 3).to_mesh()
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64
    assert np.isfinite(mesh.vertices).all() and mesh.faces.min() >= 0 and mesh.faces.max() < len(mesh.vertices)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.area > 0 and (tm.area_faces > 0).all() and mesh.num_faces >= 48
    assert mesh.has_color and mesh.face_colors.shape == (mesh.num_faces, 3)
    assert ((mesh.face_colors >= 0) & (mesh.face_colors <= 1)).all()
    assert abs(float(mesh.vertices[:, 1].min())) < 1e-6  # stands on y = 0
    palette = {tuple(np.float32(v)) for v in PALETTE.values()}
    assert {tuple(c) for c in mesh.face_colors} <= palette


@pytest.mark.parametrize("color_mode", ["material", "vertex"])
def test_glb_round_trip_keeps_faces_and_colours(tmp_path: Path, color_mode: str) -> None:
    for category in CATEGORIES:
        shape = make_shape(category, 11)
        mesh = shape.to_mesh()
        path = shape.export_glb(tmp_path / f"{category}.glb", color_mode=color_mode)
        scene = trimesh.load(path, force="scene")
        geoms = list(scene.geometry.values())
        assert sum(len(g.faces) for g in geoms) == mesh.num_faces
        if color_mode == "material":
            assert len(geoms) == len(shape.parts)
            got = {tuple(g.visual.material.baseColorFactor[:3]) for g in geoms}
        else:
            got = {tuple(c[:3]) for g in geoms for c in g.visual.vertex_colors}
        want = {tuple(np.round(np.float64(PALETTE[p.color]) * 255).astype(int)) for p in shape.parts}
        assert {tuple(int(x) for x in c) for c in got} == want, category
        bounds = scene.bounds  # Y up survives: glTF is Y up too
        assert np.allclose(bounds, [mesh.vertices.min(0), mesh.vertices.max(0)], atol=1e-5)


def test_generate_is_balanced_deterministic_and_reproducible() -> None:
    shapes = list(generate(2 * len(CATEGORIES) + 3, seed=5))
    counts = Counter(s.category for s in shapes)
    assert set(counts) == set(CATEGORIES) and max(counts.values()) - min(counts.values()) <= 1
    assert len({s.uid for s in shapes}) == len(shapes)
    assert [s.caption for s in shapes] == [s.caption for s in generate(len(shapes), seed=5)]
    assert [s.uid for s in shapes] != [s.uid for s in generate(len(shapes), seed=6)]
    again = make_shape(shapes[4].category, int(shapes[4].uid.rsplit("-", 1)[1]))
    assert np.array_equal(again.to_mesh().vertices, shapes[4].to_mesh().vertices)
    assert {s.category for s in generate(6, seed=0, categories=["cup", "tree"])} == {"cup", "tree"}


def descriptor(category: str, seed: int) -> np.ndarray:
    """Shape features from a surface point cloud: box extents, D2, height and axis-distance histograms."""
    mesh = make_shape(category, seed).to_mesh()
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    pts, _ = trimesh.sample.sample_surface(tm, 2048, seed=seed)
    pts = pts - (pts.min(0) + pts.max(0)) / 2
    pts /= np.linalg.norm(pts, axis=1).max()
    rng = np.random.default_rng(seed)
    d2 = np.linalg.norm(pts[rng.integers(0, len(pts), 4096)] - pts[rng.integers(0, len(pts), 4096)], axis=1)
    hists = [
        np.histogram(x, bins=10, range=r)[0] / len(x)
        for x, r in ((d2, (0, 2)), (pts[:, 1], (-1, 1)), (np.linalg.norm(pts[:, [0, 2]], axis=1), (0, 1)))
    ]
    return np.concatenate([np.ptp(pts, axis=0) / 2, *hists])


def test_categories_are_geometrically_separable() -> None:
    """Nearest-centroid on simple point-cloud descriptors, held-out seeds: far above chance."""
    train = np.stack([[descriptor(c, s) for s in range(6)] for c in CATEGORIES])  # (C, 6, D)
    centroids = train.mean(1)
    scale = train.reshape(-1, train.shape[-1]).std(0) + 1e-3
    test_seeds = range(100, 104)
    hits = [
        int(np.argmin((((descriptor(c, s) - centroids) / scale) ** 2).sum(1)) == i)
        for i, c in enumerate(CATEGORIES)
        for s in test_seeds
    ]
    accuracy = float(np.mean(hits))
    assert accuracy >= 0.85, f"held-out accuracy {accuracy:.2f} (chance {1 / len(CATEGORIES):.2f})"


@pytest.mark.parametrize("color_mode", ["material", "vertex"])
def test_exported_glb_flows_through_the_project_loader_and_sampler(tmp_path: Path, color_mode: str) -> None:
    from pipelines.meshes.load import load_mesh
    from pipelines.meshes.sampling import sample_points

    for category in ("chair", "tree", "car"):
        shape = make_shape(category, seed=5)
        direct = shape.to_mesh()
        loaded = load_mesh(shape.export_glb(tmp_path / f"{category}-{color_mode}.glb", color_mode=color_mode))
        assert loaded.num_faces == direct.num_faces
        assert np.allclose(np.sort(loaded.vertices, axis=0), np.sort(direct.vertices, axis=0), atol=1e-5)
        a = sample_points(direct, num_points=4000, seed=1)
        b = sample_points(loaded, num_points=4000, seed=1)
        assert a.has_color and b.has_color
        # The same palette colours come back (8-bit in the GLB), in the same proportions.
        colours_a = {tuple(c) for c in np.round(a.points[:, 3:] * 255).astype(int)}
        colours_b = {tuple(c) for c in np.round(b.points[:, 3:] * 255).astype(int)}
        assert colours_a == colours_b


def test_no_category_is_named_in_another_categorys_texts() -> None:
    # The demo holds out whole categories; their names must never reach training through other shapes' texts.
    for category in CATEGORIES:
        others = set(CATEGORIES) - {category}
        for seed in range(20):
            words = {w for text in make_shape(category, seed).texts for w in re.findall(r"[a-z]+", text)}
            assert not words & others, (category, seed, words & others)
