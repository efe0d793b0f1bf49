"""Multi-view renderer: framing, colour rules, texture orientation, poses, errors, reuse."""

from __future__ import annotations

import moderngl
import numpy as np
import pytest
import trimesh

from pipelines.meshes.cameras import RenderConfig, camera_poses, intrinsics
from pipelines.meshes.mesh import NO_COLOR, Mesh, MeshError
from pipelines.meshes.render import Renderer, RenderError, is_software
from pipelines.sources.procedural import make_shape

CFG = RenderConfig(num_views=6, size=96)
WHITE = np.array([255, 255, 255])


def to_mesh(tm: trimesh.Trimesh, **colors: np.ndarray) -> Mesh:
    return Mesh(vertices=np.asarray(tm.vertices, np.float32), faces=np.asarray(tm.faces, np.int64), **colors)


def solid(tm: trimesh.Trimesh, rgb: tuple[float, float, float]) -> Mesh:
    return to_mesh(tm, face_colors=np.tile(np.float32(rgb), (len(tm.faces), 1)))


def quad(x0: float, x1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square in the z = 0 plane facing +Z: vertices, two faces, glTF UVs (v = 0 at the top)."""
    verts = np.array([[x0, -1, 0], [x1, -1, 0], [x1, 1, 0], [x0, 1, 0]], np.float32)
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)  # bottom-left, bottom-right, top-right, top-left
    return verts, np.array([[0, 1, 2], [0, 2, 3]], np.int64), uv


def foreground(image: np.ndarray) -> np.ndarray:
    return (image != 255).any(-1)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    try:
        r = Renderer(CFG)
    except RenderError as err:
        pytest.skip(str(err))
    yield r
    r.close()


def front_renderer(**kw: object) -> Renderer:
    """One view from +Z at eye level: image right = +X, image up = +Y."""
    return Renderer(RenderConfig(num_views=1, size=96, elevation_deg=0.0, **kw))


def test_views_non_blank_distinct_white_corners(renderer: Renderer) -> None:
    views = renderer.render(to_mesh(trimesh.creation.box((1.0, 2.0, 0.5))))
    assert views.images.shape == (6, 96, 96, 3) and views.images.dtype == np.uint8
    assert all(foreground(img).mean() > 0.05 for img in views.images)
    for a, b in zip(views.images[:3], views.images[1:4], strict=True):  # views 1..3 see a different face mix
        assert np.abs(a.astype(int) - b).mean() > 1
    corners = views.images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 255).all()
    fg = views.images[0][foreground(views.images[0])]  # no colour: the NO_COLOR grey, lit
    assert np.ptp(fg.astype(int), axis=-1).max() <= 2 and fg.mean() < 255 * min(1.0, NO_COLOR * 1.2)


def test_red_mesh_renders_red(renderer: Renderer) -> None:
    images = renderer.render(solid(trimesh.creation.icosphere(3), (1.0, 0.0, 0.0))).images
    fg = images[foreground(images)].astype(int)
    red = (fg[:, 0] > 150) & (fg[:, 1:].max(-1) < 40)
    assert red.mean() > 0.9  # the rest: antialiased silhouette pixels blended with the background


def test_vertex_colours_are_interpolated() -> None:
    sphere = trimesh.creation.icosphere(3)
    top = (sphere.vertices[:, 1] > 0)[:, None]
    colors = np.where(top, [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]).astype(np.float32)  # red top, blue bottom
    with front_renderer() as r:
        image = r.render(to_mesh(sphere, vertex_colors=colors)).images[0].astype(int)
    upper, lower = image[25, 48], image[70, 48]
    assert upper[0] > 120 and upper[2] < 40 and lower[2] > 120 and lower[0] < 40


def test_texture_quadrants_land_where_expected() -> None:
    tex = np.zeros((64, 64, 3), np.uint8)
    tex[:32, :32], tex[:32, 32:] = (255, 0, 0), (0, 255, 0)  # top-left red, top-right green
    tex[32:, :32], tex[32:, 32:] = (0, 0, 255), (255, 255, 0)  # bottom-left blue, bottom-right yellow
    verts, faces, uv = quad(-1, 1)
    mesh = Mesh(verts, faces, uv=uv, textures=[tex], face_texture=np.zeros(2, np.int32))
    dimmed = Mesh(
        verts,
        faces,
        uv=uv,
        textures=[tex],
        face_texture=np.zeros(2, np.int32),
        face_colors=np.full((2, 3), 0.5, np.float32),
    )  # base colour factor multiplies the texture
    with front_renderer(samples=0) as r:
        image, half = (r.render(m).images[0].astype(int) for m in (mesh, dimmed))
    expect = {(35, 35): (1, 0, 0), (35, 61): (0, 1, 0), (61, 35): (0, 0, 1), (61, 61): (1, 1, 0)}
    for (row, col), rgb in expect.items():
        on, off = np.array(rgb, bool), ~np.array(rgb, bool)
        assert (image[row, col][on] > 180).all() and (image[row, col][off] < 40).all(), (row, col, image[row, col])
        assert np.allclose(half[row, col][on], image[row, col][on] / 2, atol=3)


def test_mixed_textures_and_face_colours_in_one_mesh() -> None:
    """Faces sorted into per-texture draws must keep their own face colour (face offset per draw)."""
    parts = [quad(-3, -1), quad(-1, 1), quad(1, 3)]  # left: texture 1, middle: untextured, right: texture 0
    verts = np.concatenate([p[0] for p in parts])
    faces = np.concatenate([p[1] + 4 * i for i, p in enumerate(parts)])
    uv = np.concatenate([p[2] for p in parts])
    red, green = np.full((8, 8, 3), (255, 0, 0), np.uint8), np.full((8, 8, 3), (0, 255, 0), np.uint8)
    face_colors = np.float32([[1, 1, 1]] * 2 + [[0, 0, 1]] * 2 + [[1, 1, 1]] * 2)
    mesh = Mesh(
        verts, faces, uv=uv, textures=[red, green], face_texture=np.int32([1, 1, -1, -1, 0, 0]), face_colors=face_colors
    )
    with front_renderer() as r:
        row = r.render(mesh).images[0][48].astype(int)
    left, middle, right = row[22], row[48], row[74]
    assert left[1] > 180 and left[[0, 2]].max() < 40
    assert middle[2] > 180 and middle[:2].max() < 40
    assert right[0] > 180 and right[1:].max() < 40


def test_poses_are_rigid_and_look_at_the_origin() -> None:
    cfg = RenderConfig(num_views=9, elevation_deg=(10.0, 30.0, -20.0))
    poses = camera_poses(cfg).astype(np.float64)
    rot, eye = poses[:, :3, :3], poses[:, :3, 3]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(rot), 1.0, atol=1e-5) and np.allclose(poses[:, 3], [0, 0, 0, 1])
    assert np.allclose(np.linalg.norm(eye, axis=1), cfg.distance, atol=1e-4)
    assert np.allclose(-rot[:, :, 2], -eye / cfg.distance, atol=1e-5)  # viewing direction is -z: to the origin
    assert (rot[:, 1, 1] > 0).all()  # camera up has a positive world-Y component: upright images
    assert np.allclose(np.degrees(np.arcsin(eye[:, 1] / cfg.distance)), [10, 30, -20] * 3, atol=1e-3)
    azimuth = np.degrees(np.arctan2(eye[:, 0], eye[:, 2])) % 360
    assert np.allclose(np.diff(azimuth), 40, atol=1e-3)


def test_poses_and_intrinsics_project_onto_the_rendered_pixels(renderer: Renderer) -> None:
    """Two small spheres on the X axis appear where pose + intrinsics put their centres."""
    red = trimesh.creation.icosphere(2, radius=0.12).apply_translation((0.88, 0, 0))
    blue = trimesh.creation.icosphere(2, radius=0.12).apply_translation((-0.88, 0, 0))
    mesh = solid(red, (1, 0, 0))
    mesh = Mesh(
        np.concatenate([mesh.vertices, np.float32(blue.vertices)]),
        np.concatenate([mesh.faces, blue.faces + len(red.vertices)]),
        face_colors=np.float32([[1, 0, 0]] * len(red.faces) + [[0, 0, 1]] * len(blue.faces)),
    )
    mesh.vertices = mesh.vertices * 3 + np.float32([5, -2, 1])  # the renderer undoes this for framing
    views = renderer.render(mesh)
    flip = np.diag([1.0, -1.0, -1.0])  # OpenGL camera axes -> OpenCV (y down, z forward)
    for image, pose in zip(views.images, views.poses, strict=True):
        for centre, channel in (((0.88, 0, 0), 0), ((-0.88, 0, 0), 2)):
            world = np.append(np.array(centre) * 3 + [5, -2, 1], 1.0)
            cam = flip @ (np.linalg.inv(pose)[:3] @ views.normalization @ world)
            u, v, _ = views.intrinsics @ (cam / cam[2])
            pixel = image[int(v), int(u)].astype(int)
            assert pixel[channel] > 120 and np.delete(pixel, channel).max() < 40, (u, v, pixel)
    assert np.allclose(views.intrinsics, intrinsics(CFG))


def test_missing_egl_device_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_device(**kwargs: object) -> None:
        raise Exception("eglGetDisplay failed")

    monkeypatch.setattr(moderngl, "create_standalone_context", no_device)
    with pytest.raises(RenderError, match="no EGL device available") as info:
        Renderer(RenderConfig(device_index=3))
    assert "libegl1" in str(info.value) and "GPU node" in str(info.value) and "device_index=3" in str(info.value)


def test_unrenderable_meshes_raise_mesh_error(renderer: Renderer) -> None:
    with pytest.raises(MeshError, match="no triangles"):
        renderer.render(Mesh(np.zeros((3, 3), np.float32), np.zeros((0, 3), np.int64), source="empty.glb"))
    box = to_mesh(trimesh.creation.box())
    box.vertices[0] = np.nan
    with pytest.raises(MeshError, match="non-finite"):
        renderer.render(box)
    with pytest.raises(ValueError, match="elevations"):
        RenderConfig(elevation_deg=90.0)


def test_reuse_across_meshes_is_identical_and_releases_gl_objects(
    renderer: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, created = renderer._ctx, []
    for name in ("buffer", "texture", "vertex_array"):
        make = getattr(ctx, name)
        monkeypatch.setattr(ctx, name, lambda *a, _make=make, **k: created.append(_make(*a, **k)) or created[-1])
    sphere = solid(trimesh.creation.icosphere(2), (0.2, 0.7, 0.3))
    verts, faces, uv = quad(-1, 1)
    textured = Mesh(
        verts, faces, uv=uv, textures=[np.full((4, 4, 3), 200, np.uint8)], face_texture=np.zeros(2, np.int32)
    )
    first = renderer.render(sphere).images
    renderer.render(textured)
    renderer.render(to_mesh(trimesh.creation.box()))
    assert np.array_equal(first, renderer.render(sphere).images)
    assert len(created) >= 8 and all(isinstance(obj.mglo, moderngl.InvalidObject) for obj in created)


def test_closed_renderer_refuses_to_render() -> None:
    with front_renderer() as r:
        assert r.device  # e.g. "llvmpipe (...)" or the GPU's name
    with pytest.raises(RenderError, match="closed"):
        r.render(to_mesh(trimesh.creation.box()))


def test_msaa_follows_the_device_off_on_a_cpu_rasteriser_unless_asked_for(renderer: Renderer) -> None:
    assert is_software("llvmpipe (LLVM 15.0.6, 256 bits)") and is_software("softpipe")
    assert not is_software("NVIDIA H100 80GB HBM3/PCIe/SSE2")
    chair = make_shape("chair", 0).to_mesh()
    renderer.render(chair)
    assert renderer.samples == (0 if is_software(renderer.device) else 4)  # CFG leaves samples at "auto"
    with Renderer(RenderConfig(num_views=1, size=64, samples=4)) as r:
        r.render(chair)
        assert r.samples == 4  # asked for: MSAA on the CPU rasteriser too
    with pytest.raises(ValueError, match="samples must be"):
        RenderConfig(samples="always")
    from pipelines.build.config import BuildConfig
    from pipelines.settings import apply_overrides

    assert BuildConfig().msaa == "auto" and apply_overrides(BuildConfig(), ["msaa=4"]).msaa == 4  # --set msaa=4
    with pytest.raises(ValueError, match="msaa must be 'auto' or an int >= 0, got -1"):
        BuildConfig(msaa=-1)
