"""Surface sampling: unit sphere, area weighting, determinism, and colour from every source.

The texture tests write their GLB and OBJ files byte by byte here (not through trimesh), so the UV
conventions are checked against the formats themselves: a 64x64 image with four coloured quadrants
on a unit quad must appear upright, i.e. the image's top-left quadrant at the quad's top-left.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from PIL import Image

from pipelines.meshes.load import load_mesh
from pipelines.meshes.mesh import NO_COLOR, Mesh
from pipelines.meshes.sampling import bilinear_lookup, normalize_unit_sphere, sample_points

MESHES = SHARED / "meshes"
GOOD = sorted((MESHES / "real").glob("*.*")) + sorted((MESHES / "odd").glob("*.*"))
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
QUAD = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)  # x right, y up, z = 0
QUAD_FACES = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)


def quadrant_png() -> bytes:
    """64x64 PNG: top-left red, top-right green, bottom-left blue, bottom-right yellow."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[:32, :32], image[:32, 32:], image[32:, :32], image[32:, 32:] = RED, GREEN, BLUE, YELLOW
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def write_glb(path: Path, uv_v_down: np.ndarray, factor: list[float] | None = None) -> Path:
    """A GLB of QUAD textured with ``quadrant_png`` at the given raw glTF TEXCOORD_0."""
    blobs = [QUAD_FACES.tobytes(), QUAD.tobytes(), uv_v_down.astype(np.float32).tobytes(), quadrant_png()]
    views, binary = [], b""
    for blob in blobs:
        views.append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(blob)})
        binary += blob + b"\0" * (-len(blob) % 4)
    pbr = {"baseColorTexture": {"index": 0}} | ({"baseColorFactor": factor} if factor else {})
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 1, "TEXCOORD_0": 2}, "indices": 0, "material": 0}]}],
        "materials": [{"pbrMetallicRoughness": pbr}],
        "textures": [{"source": 0}],
        "images": [{"bufferView": 3, "mimeType": "image/png"}],
        "accessors": [
            {"bufferView": 0, "componentType": 5125, "count": 6, "type": "SCALAR"},
            {"bufferView": 1, "componentType": 5126, "count": 4, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
            {"bufferView": 2, "componentType": 5126, "count": 4, "type": "VEC2"},
        ],
        "bufferViews": views,
        "buffers": [{"byteLength": len(binary)}],
    }
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(binary), b"BIN\0") + binary
    path.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks)
    return path


def write_obj(folder: Path) -> Path:
    """OBJ + MTL + PNG of QUAD; OBJ ``vt`` has v up (origin at the image's bottom-left)."""
    (folder / "quad.png").write_bytes(quadrant_png())
    (folder / "quad.mtl").write_text("newmtl tex\nKd 0.8 0.8 0.8\nmap_Kd quad.png\n")
    verts = "".join(f"v {x} {y} {z}\n" for x, y, z in QUAD)
    (folder / "quad.obj").write_text(
        f"mtllib quad.mtl\n{verts}vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nusemtl tex\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n"
    )
    return folder / "quad.obj"


def expected_quadrant_colors(sample) -> tuple[np.ndarray, np.ndarray]:
    """Mesh-space x, y of each point away from quadrant borders, and the upright image's colour there."""
    xyz = sample.points[:, :3] * sample.scale + sample.center
    x, y = xyz[:, 0], xyz[:, 1]
    inside = (np.abs(x - 0.5) > 0.03) & (np.abs(y - 0.5) > 0.03) & (np.minimum(x, y) > 0.03) & (np.maximum(x, y) < 0.97)
    top, right = y[inside] > 0.5, x[inside] > 0.5  # y up: the image's top row is at y = 1
    palette = np.array([BLUE, YELLOW, RED, GREEN]) / 255.0  # indexed by 2 * top + right
    return inside, palette[2 * top + right]


def check_quadrants(sample, factor=(1.0, 1.0, 1.0)) -> None:
    inside, want = expected_quadrant_colors(sample)
    assert inside.sum() > 1000 and sample.has_color
    # trimesh stores baseColorFactor as uint8, so a factor is exact to 1/255
    np.testing.assert_allclose(sample.points[inside, 3:], want * np.asarray(factor), atol=1 / 255)
    if factor == (1.0, 1.0, 1.0):
        assert np.isin(sample.points[inside, 3:], [0.0, 1.0]).all()  # pure texels, no blending


@pytest.mark.parametrize("path", GOOD, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_good_file_samples_into_the_unit_sphere(path: Path) -> None:
    sample = sample_points(load_mesh(path), num_points=2048)
    assert sample.points.shape == (2048, 6) and sample.points.dtype == np.float32
    norms = np.linalg.norm(sample.points[:, :3], axis=1)
    assert 0.99 < norms.max() <= 1 + 1e-5
    np.testing.assert_allclose(sample.points[:, :3].mean(axis=0), 0, atol=1e-5)
    assert sample.points[:, 3:].min() >= 0 and sample.points[:, 3:].max() <= 1


def test_default_is_10000_points() -> None:
    assert sample_points(load_mesh(MESHES / "real" / "pig.off")).points.shape == (10_000, 6)


def test_colored_tetra_keeps_its_vertex_colours() -> None:
    mesh = load_mesh(MESHES / "real" / "colored_tetra.ply")
    sample = sample_points(mesh, num_points=4000)
    rgb = sample.points[:, 3:].astype(np.float64)
    assert sample.has_color and rgb.std(axis=0).min() > 0.1  # not the constant 0.4 of "no colour"
    # each colour is a convex combination of its face's corner colours (independent, so solvable)
    corners = np.array([[255, 255, 0], [0, 255, 255], [128, 0, 255], [255, 128, 0]]) / 255.0
    face_corners = corners[mesh.faces[sample.face_index]]  # (N, corner, channel)
    weights = np.linalg.solve(face_corners.transpose(0, 2, 1), rgb[:, :, None])[..., 0]
    assert weights.min() > -1e-4
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", ["pig.stl", "bunny00.off", "sphere.ply"])
def test_files_without_colour_give_0_4(name: str) -> None:
    sample = sample_points(load_mesh(MESHES / "real" / name), num_points=500)
    assert not sample.has_color
    assert np.all(sample.points[:, 3:] == np.float32(NO_COLOR))


def test_off_face_colours_are_sampled() -> None:
    sample = sample_points(load_mesh(MESHES / "odd" / "quint_tris.off"), num_points=500)
    assert sample.has_color
    np.testing.assert_allclose(sample.points[:, 3:], np.tile([0.7, 0, 0], (500, 1)), atol=1e-6)


def test_vertex_colours_are_interpolated_barycentrically() -> None:
    # corners at the unit axes coloured R, G, B: a point's colour equals its own coordinates
    mesh = Mesh(vertices=np.eye(3, dtype=np.float32), faces=np.array([[0, 1, 2]]), vertex_colors=np.eye(3))
    sample = sample_points(mesh, num_points=1000, seed=3)
    original = sample.points[:, :3] * sample.scale + sample.center
    np.testing.assert_allclose(sample.points[:, 3:], original, atol=1e-5)


def test_textured_glb_gives_the_texture_colours(tmp_path: Path) -> None:
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]])  # glTF: v down, so y = 0 reads the image's bottom row
    check_quadrants(sample_points(load_mesh(write_glb(tmp_path / "quad.glb", uv)), num_points=8000))


def test_base_color_factor_multiplies_the_texture(tmp_path: Path) -> None:
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]])
    mesh = load_mesh(write_glb(tmp_path / "quad.glb", uv, factor=[0.5, 1.0, 0.25, 1.0]))
    check_quadrants(sample_points(mesh, num_points=8000), factor=(0.5, 1.0, 0.25))


def test_uvs_outside_0_1_repeat(tmp_path: Path) -> None:
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]]) + [3.0, -2.0]  # whole periods away
    check_quadrants(sample_points(load_mesh(write_glb(tmp_path / "quad.glb", uv)), num_points=8000))


def test_textured_obj_gives_the_texture_colours(tmp_path: Path) -> None:
    check_quadrants(sample_points(load_mesh(write_obj(tmp_path)), num_points=8000))  # Kd 0.8 ignored


def test_bilinear_lookup_interpolates_between_texel_centres_and_wraps() -> None:
    texture = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)  # 1x2: black, white
    uv = np.array([[0.25, 0.5], [0.75, 0.5], [0.5, 0.5], [0.0, 0.5], [1.25, 7.5]])
    got = bilinear_lookup(texture, uv)[:, 0]
    # texel centres at u = 0.25, 0.75; u = 0 lies halfway between the wrapped white and black
    np.testing.assert_allclose(got, [0.0, 1.0, 0.5, 0.5, 0.0], atol=1e-6)


def test_faces_are_chosen_in_proportion_to_area() -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 1, 0]], np.float32)
    mesh = Mesh(vertices=vertices, faces=np.array([[0, 1, 2], [3, 4, 5]]))  # areas 0.5 and 1.5
    sample = sample_points(mesh, num_points=20_000)
    assert abs((sample.face_index == 0).mean() - 0.25) < 0.015


def test_points_lie_on_the_surface_uniformly() -> None:
    mesh = Mesh(vertices=QUAD, faces=QUAD_FACES.astype(np.int64))
    sample = sample_points(mesh, num_points=20_000)
    original = sample.points[:, :3] * sample.scale + sample.center
    assert np.abs(original[:, 2]).max() < 1e-6
    np.testing.assert_allclose(original[:, :2].mean(axis=0), [0.5, 0.5], atol=0.01)
    counts = np.histogram2d(original[:, 0], original[:, 1], bins=4, range=[[0, 1], [0, 1]])[0]
    assert counts.min() > 0.8 * 20_000 / 16  # no region of the quad is under-sampled


def test_sampling_is_deterministic_per_seed() -> None:
    mesh = load_mesh(MESHES / "real" / "colored_tetra.ply")
    first, again = sample_points(mesh, 1000, seed=7), sample_points(mesh, 1000, seed=7)
    np.testing.assert_array_equal(first.points, again.points)
    assert not np.array_equal(first.points, sample_points(mesh, 1000, seed=8).points)


def test_normalize_unit_sphere() -> None:
    xyz = np.random.default_rng(0).normal(5.0, 3.0, size=(500, 3)).astype(np.float32)
    out = normalize_unit_sphere(xyz)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-6)
    assert abs(np.linalg.norm(out, axis=1).max() - 1) < 1e-6
    assert normalize_unit_sphere(np.array([[0, 0, 0], [2, 0, 0]])).tolist() == [[-1.0, 0, 0], [1.0, 0, 0]]
