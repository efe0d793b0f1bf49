"""Mesh loading: every shared sample loads or fails with its own message; scenes, colours, limits."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import SHARED
from PIL import Image
from trimesh.visual.material import PBRMaterial

from pipelines.meshes.guard import MeshLimits
from pipelines.meshes.load import load_mesh
from pipelines.meshes.mesh import NO_COLOR, MeshError

MESHES = SHARED / "meshes"
GOOD = sorted((MESHES / "real").glob("*.*")) + sorted((MESHES / "odd").glob("*.*"))
# one accurate message per broken file (after the path)
BROKEN = {
    "empty.obj": r"empty file \(0 bytes\)",
    "garbage.stl": r"not a valid STL file: no ASCII 'solid' header, and as binary STL it claims \d+ triangles",
    "nan_vertices.obj": r"2 vertices used by faces have NaN or infinite coordinates",
    "short_header.off": r"truncated: header claims 3 vertices and 1 faces, but only 2 lines follow$",
    "truncated.glb": r"truncated GLB: header declares 1838084 bytes but the file has 1500",
    "zero_area.obj": r"all 1 faces have zero area \(degenerate mesh\)",
}
TRIANGLE_OFF = "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"


def load_error(path: Path, **kwargs) -> str:
    with pytest.raises(MeshError) as info:
        load_mesh(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: ") :]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def quad(offset: tuple[float, float, float] = (0, 0, 0), **kwargs) -> trimesh.Trimesh:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float) + offset
    return trimesh.Trimesh(vertices, [[0, 1, 2], [0, 2, 3]], process=False, **kwargs)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_good_file_loads(path: Path) -> None:
    mesh = load_mesh(path)
    assert mesh.vertices.dtype == np.float32 and mesh.vertices.shape[1] == 3
    assert mesh.faces.dtype == np.int64 and mesh.num_faces > 0
    assert np.isfinite(mesh.vertices).all()
    assert np.array_equal(np.unique(mesh.faces), np.arange(len(mesh.vertices)))  # every vertex is used
    assert mesh.source == str(path)
    for colors in (mesh.vertex_colors, mesh.face_colors):
        assert colors is None or (colors.min() >= 0 and colors.max() <= 1)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_file_gets_its_own_error(name: str) -> None:
    message = load_error(MESHES / "broken" / name)
    assert re.match(BROKEN[name], message), message
    others = [pattern for other, pattern in BROKEN.items() if other != name]
    assert not any(re.match(pattern, message) for pattern in others)  # distinct messages


def test_every_broken_file_is_covered() -> None:
    assert sorted(p.name for p in (MESHES / "broken").iterdir()) == sorted(BROKEN)


def test_colored_tetra_keeps_its_vertex_colours() -> None:
    mesh = load_mesh(MESHES / "real" / "colored_tetra.ply")
    want = np.array([[255, 255, 0], [0, 255, 255], [128, 0, 255], [255, 128, 0]]) / 255.0
    np.testing.assert_allclose(mesh.vertex_colors, want, atol=1e-6)
    assert mesh.has_color and not mesh.textures


def test_off_colours() -> None:
    cactus = load_mesh(MESHES / "real" / "cactus.off")  # COFF: "x y z 192 192 192 255"
    np.testing.assert_allclose(cactus.vertex_colors, 192 / 255, atol=1e-6)
    tris = load_mesh(MESHES / "odd" / "quint_tris.off")  # per-face ".7 0 0"
    assert tris.vertex_colors is None
    np.testing.assert_allclose(tris.face_colors, np.tile([0.7, 0, 0], (20, 1)), atol=1e-6)


@pytest.mark.parametrize("name", ["pig.stl", "bunny00.off", "sphere.ply"])
def test_files_without_colour_have_none(name: str) -> None:
    mesh = load_mesh(MESHES / "real" / name)  # trimesh's invented default grey is not colour
    assert not mesh.has_color and mesh.vertex_colors is None and mesh.face_colors is None


def test_degenerate_faces_are_dropped_and_good_ones_kept() -> None:
    mesh = load_mesh(MESHES / "odd" / "degtri_sliding.off")  # 8 faces, 4 of them collinear
    assert mesh.num_faces == 4
    tri = mesh.vertices[mesh.faces]
    assert (np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) > 0).all()


def test_off_polygons_are_fan_triangulated_with_their_colours(tmp_path: Path) -> None:
    text = "COFF\n5 2 0\n0 0 0 255 0 0\n1 0 0 255 0 0\n1 1 0 255 0 0\n0 1 0 255 0 0\n0.5 2 0 0 0 255\n"
    text += "4 0 1 2 3 0 255 0\n5 0 1 2 4 3\n"  # a green quad, then an uncoloured pentagon
    mesh = load_mesh(write(tmp_path / "poly.off", text))
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [0, 1, 2], [0, 2, 4], [0, 4, 3]])
    np.testing.assert_allclose(mesh.face_colors, [[0, 1, 0]] * 2 + [[NO_COLOR] * 3] * 3)
    np.testing.assert_allclose(mesh.vertex_colors[-1], [0, 0, 1])  # vertex colours are kept too


@pytest.mark.parametrize(
    "text",
    [
        "OFF3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n",  # ModelNet: counts glued to the keyword
        "# by hand\nOFF\n\n3 1\n0 0 0 # origin\n\n1 0 0\r\n0 1 0\n3 0 1 2",  # comments, blank lines, CRLF
        "NOFF\n3 1 0\n0 0 0 0 0 1\n1 0 0 0 0 1\n0 1 0 0 0 1\n3 0 1 2\n",  # normals after the position
    ],
)
def test_off_syntax_variants(tmp_path: Path, text: str) -> None:
    mesh = load_mesh(write(tmp_path / "t.off", text))
    np.testing.assert_array_equal(mesh.vertices, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2]])
    assert not mesh.has_color


def test_ply_face_colours(tmp_path: Path) -> None:
    header = "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
    header += "element face 2\nproperty list uchar int vertex_indices\n"
    header += "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    body = "0 0 0\n1 0 0\n1 1 0\n0 1 0\n3 0 1 2 255 0 0\n3 0 2 3 0 0 255\n"
    mesh = load_mesh(write(tmp_path / "f.ply", header + body))
    assert mesh.vertex_colors is None
    np.testing.assert_allclose(mesh.face_colors, [[1, 0, 0], [0, 0, 1]])


def test_z_up_sources_are_rotated_to_y_up(tmp_path: Path) -> None:
    path = write(tmp_path / "tri.off", "OFF\n3 1 0\n0 0 0\n1 0 0\n0 0 2\n3 0 1 2\n")
    np.testing.assert_array_equal(load_mesh(path).vertices[2], [0, 0, 2])
    np.testing.assert_array_equal(load_mesh(path, up_axis="z").vertices, [[0, 0, 0], [1, 0, 0], [0, 2, 0]])
    with pytest.raises(ValueError, match="up_axis"):
        load_mesh(path, up_axis="x")


def test_glb_nodes_are_placed_by_their_transforms(tmp_path: Path) -> None:
    scene = trimesh.Scene()
    geometry = quad()
    scene.add_geometry(
        geometry, node_name="a", geom_name="quad", transform=trimesh.transformations.translation_matrix([5, 0, 0])
    )
    scene.add_geometry(
        geometry, node_name="b", geom_name="quad", transform=trimesh.transformations.translation_matrix([0, 0, -3])
    )
    scene.export(tmp_path / "two.glb")
    mesh = load_mesh(tmp_path / "two.glb")
    assert mesh.num_faces == 4 and len(mesh.vertices) == 8
    corners = {tuple(v) for v in mesh.vertices.tolist()}
    assert {(5, 0, 0), (6, 1, 0), (0, 0, -3), (1, 1, -3)} <= corners


def test_textured_glb_keeps_texture_uv_and_factor(tmp_path: Path) -> None:
    image = np.zeros((8, 4, 4), np.uint8)  # RGBA, 8 rows x 4 columns
    image[..., 0], image[..., 3] = 200, 50
    material = PBRMaterial(baseColorTexture=Image.fromarray(image), baseColorFactor=[255, 128, 0, 255])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)  # trimesh's (OpenGL, v up) convention
    quad(visual=trimesh.visual.TextureVisuals(uv=uv, material=material)).export(tmp_path / "tex.glb")
    mesh = load_mesh(tmp_path / "tex.glb")
    assert len(mesh.textures) == 1 and mesh.textures[0].shape == (8, 4, 3)  # alpha dropped
    assert (mesh.textures[0][..., 0] == 200).all()
    np.testing.assert_array_equal(mesh.face_texture, [0, 0])
    np.testing.assert_allclose(mesh.uv, [[0, 1], [1, 1], [1, 0], [0, 0]])  # stored v down (glTF)
    np.testing.assert_allclose(mesh.face_colors, [[1, 128 / 255, 0]] * 2, atol=1e-6)


def test_base_color_factor_only_material_gives_that_colour(tmp_path: Path) -> None:
    material = PBRMaterial(baseColorFactor=[0.2, 0.4, 0.6, 1.0])
    quad(visual=trimesh.visual.TextureVisuals(material=material)).export(tmp_path / "factor.glb")
    mesh = load_mesh(tmp_path / "factor.glb")
    assert mesh.has_color and mesh.vertex_colors is None and not mesh.textures
    np.testing.assert_allclose(mesh.face_colors, [[0.2, 0.4, 0.6]] * 2, atol=1 / 255)


def test_gltf_color_0_is_multiplied_by_the_base_color_factor(tmp_path: Path) -> None:
    visual = trimesh.visual.TextureVisuals(material=PBRMaterial(baseColorFactor=[1.0, 0.5, 1.0, 1.0]))
    visual.vertex_attributes["color"] = np.array([[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255], [255] * 4])
    quad(visual=visual).export(tmp_path / "c0.glb")  # COLOR_0 next to a material
    mesh = load_mesh(tmp_path / "c0.glb")
    np.testing.assert_allclose(mesh.vertex_colors, [[1, 0, 0], [0, 0.5, 0], [0, 0, 1], [1, 0.5, 1]], atol=1 / 255)


def test_gltf_with_external_buffers(tmp_path: Path) -> None:
    scene = trimesh.Scene()
    scene.add_geometry(quad(face_colors=[[0, 255, 0, 255]] * 2), transform=np.diag([2.0, 2.0, 2.0, 1.0]))
    for name, data in scene.export(file_type="gltf").items():  # model.gltf + .bin buffers
        (tmp_path / name).write_bytes(data)
    mesh = load_mesh(tmp_path / "model.gltf")
    assert mesh.num_faces == 2 and mesh.vertices.max() == 2.0 and mesh.has_color


def test_mixed_scene_converts_everything_to_vertex_colours(tmp_path: Path) -> None:
    scene = trimesh.Scene()
    colored = quad(vertex_colors=[[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255], [255, 255, 255, 255]])
    factor = quad((2, 0, 0), visual=trimesh.visual.TextureVisuals(material=PBRMaterial(baseColorFactor=[0, 0, 1.0, 1])))
    scene.add_geometry(colored, geom_name="colored")
    scene.add_geometry(factor, geom_name="factor")
    scene.add_geometry(quad((4, 0, 0)), geom_name="plain")
    scene.export(tmp_path / "mixed.glb")
    mesh = load_mesh(tmp_path / "mixed.glb")
    assert mesh.num_faces == 6 and mesh.vertex_colors is not None
    by_x = {int(x): mesh.vertex_colors[mesh.vertices[:, 0] // 2 == x // 2] for x in (0, 2, 4)}
    assert len(by_x[2]) == 6  # the face-coloured quad is unmerged: three vertices per face
    np.testing.assert_allclose(by_x[2], [[0, 0, 1]] * 6)
    np.testing.assert_allclose(by_x[4], NO_COLOR)  # colourless geometry stays grey
    assert {tuple(c) for c in by_x[0].tolist()} == {(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)}


def test_obj_kd_colours_and_missing_kd(tmp_path: Path) -> None:
    write(tmp_path / "m.mtl", "newmtl red\nKd 1 0 0\nnewmtl bare\nNs 10\n")
    text = "mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nusemtl red\nf 1 2 3\nusemtl bare\nf 1 3 4\n"
    mesh = load_mesh(write(tmp_path / "m.obj", text))
    assert mesh.num_faces == 2 and mesh.has_color
    np.testing.assert_allclose(sorted(mesh.face_colors.tolist()), [[NO_COLOR] * 3, [1, 0, 0]], atol=1e-6)


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("shape.xyz", "1 2 3\n", r"unsupported file extension '\.xyz'"),
        (
            "range.off",
            "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n",
            r"face indices out of range: index 7 with 3 vertices",
        ),
        ("range.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", r"could not read the OBJ file|face indices out of range"),
        (
            "words.off",
            "OFF\n3 1 0\n0 0 0\n1 zero 0\n0 1 0\n3 0 1 2\n",
            r"could not read the OFF file: ValueError.*zero",
        ),
        ("binary.off", "OFF BINARY\n3 1 0\n" + "0" * 64, r"binary OFF is not supported"),
        ("nothing.off", "solid nothing\n", r"not an OFF file"),
        ("points.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n", r"no faces"),
        (
            "ply.ply",
            "ply\nformat ascii 1.0\nelement vertex 100000\nproperty float x\nend_header\n0\n",
            r"truncated: the PLY",
        ),
        ("noend.ply", "ply\nformat ascii 1.0\nelement vertex 3\n", r"PLY header has no end_header"),
        ("absurd.glb", "glTF", r"not a GLB file"),
        ("empty.ply", "ply\nformat ascii 1.0\nelement vertex 0\nelement face 0\nend_header\n", r"no faces"),
    ],
)
def test_bad_files_get_clear_errors(tmp_path: Path, name: str, text: str, pattern: str) -> None:
    assert re.match(pattern, load_error(write(tmp_path / name, text)))


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert load_error(tmp_path / "gone.glb") == "no such file"
    (tmp_path / "dir.obj").mkdir()
    assert load_error(tmp_path / "dir.obj") == "not a regular file"


def test_absurd_header_counts_fail_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    path = write(tmp_path / "huge.off", "OFF\n10000000000 1 0\n0 0 0\n")
    assert load_error(path) == "header claims 10000000000 vertices, over the limit of 5000000"
    ply = "ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nelement face 99999999999\n"
    ply += "property list uchar int vertex_indices\nend_header\n"
    assert (
        load_error(write(tmp_path / "huge.ply", ply)) == "header claims 99999999999 faces, over the limit of 10000000"
    )
    assert time.perf_counter() - start < 1.0


def test_limits_on_size_counts_and_accessors(tmp_path: Path) -> None:
    path = write(tmp_path / "tri.off", TRIANGLE_OFF)
    assert re.match(
        r"file is \d+ bytes, over the limit of 10 bytes", load_error(path, limits=MeshLimits(max_file_bytes=10))
    )
    assert load_error(path, limits=MeshLimits(max_vertices=2)) == "header claims 3 vertices, over the limit of 2"
    quad().export(tmp_path / "quad.glb")
    small = MeshLimits(max_vertices=3, max_faces=1)
    assert re.match(r"glTF accessor \d claims \d elements \(limit 3\)", load_error(tmp_path / "quad.glb", limits=small))
    quad().export(tmp_path / "quad.stl")
    assert load_error(tmp_path / "quad.stl", limits=small) == "binary STL header claims 2 faces, over the limit of 1"


def test_time_budget(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "big.off"
    with path.open("w") as f:  # 100k vertices, 200k faces: a few tenths of a second to parse
        f.write("OFF\n100000 200000 0\n")
        np.savetxt(f, rng.random((100_000, 3)), fmt="%.5f")
        np.savetxt(
            f, np.c_[np.full(200_000, 3), (rng.integers(0, 100_000, (200_000, 1)) + [0, 1, 2]) % 100_000], fmt="%d"
        )
    message = load_error(path, limits=MeshLimits(time_budget_s=0.005))
    assert message == "loading took longer than the time budget of 0.005 s (MeshLimits.time_budget_s)"
    with ThreadPoolExecutor(1) as pool:  # the watchdog works outside the main thread too
        with pytest.raises(MeshError, match="time budget of 0.005 s"):
            pool.submit(load_mesh, path, MeshLimits(time_budget_s=0.005)).result()
        assert pool.submit(load_mesh, MESHES / "real" / "pig.off").result().num_faces == 891  # thread still fine
    assert load_mesh(path, limits=MeshLimits(time_budget_s=30)).num_faces == 200_000  # and no stray exception
