"""Offscreen multi-view renderer for ``Mesh`` objects (moderngl on a standalone EGL context).

K views (12 by default, as OpenShape) on a ring of cameras around the object (``pipelines.meshes.cameras``: the
poses, intrinsics and the unit-sphere normalisation). Shading is ambient + one Lambert light fixed in the camera
frame; both sides of every face are lit (scanned meshes often have inconsistent winding), with the flat face normal
taken from screen-space derivatives so no normals have to be uploaded.

Colour follows ``pipelines.meshes.mesh``: a textured face reads its texture at the interpolated UV times
its face colour (if any); otherwise vertex colours are interpolated; otherwise the face colour is
used flat; otherwise the constant grey ``NO_COLOR``. UVs are in the glTF convention (v = 0 is the
top row of the image): images are uploaded top row first, so ``texture(uv)`` needs no flip.

Images are (H, W, 3) uint8 with row 0 at the top.

One ``Renderer`` holds one GL context, the shader program and the framebuffers; everything that
depends on a mesh (buffers, textures, vertex arrays) is created and released inside ``render``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pipelines.meshes.cameras import RenderConfig, Views, camera_poses, intrinsics, normalisation, perspective
from pipelines.meshes.mesh import NO_COLOR, Mesh, MeshError

_EGL_HINT = "install libegl1 libegl-mesa0 libgl1-mesa-dri (Debian) or run on a GPU node"

_VERTEX_SHADER = """
#version 430
uniform mat4 mvp;         // clip <- normalised object
uniform mat4 model_view;  // camera <- normalised object
in vec3 in_pos;
in vec2 in_uv;
in vec3 in_col;
out vec3 v_view;
out vec2 v_uv;
out vec3 v_col;
void main() {
    v_view = (model_view * vec4(in_pos, 1.0)).xyz;
    v_uv = in_uv;
    v_col = in_col;
    gl_Position = mvp * vec4(in_pos, 1.0);
}
"""

# Compiled twice, with and without FACE_COLORS: reading gl_PrimitiveID slows llvmpipe down by ~40%,
# so meshes without face colours use the variant that never touches it.
_FRAGMENT_SHADER = """
layout(std430, binding = 0) readonly buffer FaceColors { uint face_rgba[]; };  // RGBA8 per face
uniform int face_offset;  // first face of this draw call (gl_PrimitiveID restarts at 0 per draw)
uniform bool textured;
uniform bool has_vertex_colors;
uniform float no_color;
uniform sampler2D tex;
uniform vec3 light_dir;   // camera frame, unit, towards the light
uniform float ambient;
uniform float diffuse;
in vec3 v_view;
in vec2 v_uv;
in vec3 v_col;
out vec4 f_color;
void main() {
    vec3 c = cross(dFdx(v_view), dFdy(v_view));
    vec3 n = length(c) > 0.0 ? normalize(c) : vec3(0.0, 0.0, 1.0);
    if (dot(n, -v_view) < 0.0) n = -n;  // two-sided: the normal faces the camera
#ifdef FACE_COLORS
    vec3 fc = unpackUnorm4x8(face_rgba[face_offset + gl_PrimitiveID]).rgb;
    vec3 untextured = has_vertex_colors ? v_col : fc;
#else
    vec3 fc = vec3(1.0);
    vec3 untextured = has_vertex_colors ? v_col : vec3(no_color);
#endif
    vec3 base = textured ? texture(tex, v_uv).rgb * fc : untextured;
    float shade = ambient + diffuse * max(dot(n, light_dir), 0.0);
    f_color = vec4(min(base * shade, vec3(1.0)), 1.0);
}
"""


class RenderError(RuntimeError):
    """The renderer cannot run here (no EGL device, no moderngl, too old OpenGL)."""


def _check(mesh: Mesh) -> None:
    name = mesh.source or "mesh"
    if mesh.faces.ndim != 2 or mesh.faces.shape[1] != 3 or len(mesh.faces) == 0:
        raise MeshError(f"{name}: no triangles to render (faces shape {mesh.faces.shape})")
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise MeshError(f"{name}: face index out of range for {len(mesh.vertices)} vertices")
    if not np.isfinite(mesh.vertices).all():
        raise MeshError(f"{name}: non-finite vertex coordinates")
    if mesh.face_texture is not None and mesh.face_texture.max(initial=-1) >= len(mesh.textures):
        raise MeshError(f"{name}: face_texture refers to {mesh.face_texture.max()} of {len(mesh.textures)}")


def _face_groups(mesh: Mesh) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Face order sorted by texture and the draw groups ``(texture or -1, first face, count)``."""
    if mesh.face_texture is None or mesh.uv is None or not mesh.textures:
        return np.arange(len(mesh.faces)), [(-1, 0, len(mesh.faces))]
    order = np.argsort(mesh.face_texture, kind="stable")
    tex_ids, first, counts = np.unique(mesh.face_texture[order], return_index=True, return_counts=True)
    return order, [(int(t), int(s), int(c)) for t, s, c in zip(tex_ids, first, counts, strict=True)]


def _vertex_data(mesh: Mesh) -> np.ndarray:
    """(V, 8) float32 interleaved position, uv, vertex colour (zeros where the mesh has none)."""
    data = np.zeros((len(mesh.vertices), 8), dtype=np.float32)
    data[:, :3] = mesh.vertices
    if mesh.uv is not None:
        data[:, 3:5] = mesh.uv
    if mesh.vertex_colors is not None:
        data[:, 5:8] = mesh.vertex_colors
    return data


def _rgba8(colors: np.ndarray) -> np.ndarray:
    """(F, 3) floats in [0, 1] -> (F,) uint32 holding R in the lowest byte, as unpackUnorm4x8 reads."""
    rgba = np.full((len(colors), 4), 255, dtype=np.uint8)
    rgba[:, :3] = np.round(np.clip(colors, 0, 1) * 255)
    return rgba.view("<u4").ravel()


SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swiftshader", "software rasterizer")


def is_software(gl_renderer: str) -> bool:
    """Whether an OpenGL renderer string names a CPU rasteriser (Mesa's llvmpipe or softpipe, SwiftShader)."""
    return any(name in gl_renderer.lower() for name in SOFTWARE_RENDERERS)


class Renderer:
    """Renders meshes into K views; holds one EGL context, reuse it across meshes, then ``close``.

    An EGL context can be current on one thread only, and stays bound to the thread that created
    it. Callers such as Ray Data actors construct on one thread and call from others, so every GL
    call runs on the renderer's own single GL thread; ``render`` may be called from any thread.
    """

    def __init__(self, cfg: RenderConfig | None = None) -> None:
        self.cfg = cfg = cfg or RenderConfig()
        self._ctx = None
        self._gl = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uni3d-gl")
        try:
            self._gl.submit(self._setup, cfg).result()
        except BaseException:
            self._gl.shutdown()
            raise

    def _setup(self, cfg: RenderConfig) -> None:
        self._ctx = _create_context(cfg.device_index)
        ctx = self._ctx
        # Keyed by "has face colours"; both share the uniforms set below.
        self._programs = {
            flag: ctx.program(
                vertex_shader=_VERTEX_SHADER,
                fragment_shader=f"#version 430\n{'#define FACE_COLORS' if flag else ''}\n" + _FRAGMENT_SHADER,
            )
            for flag in (False, True)
        }
        wanted = (0 if is_software(str(ctx.info["GL_RENDERER"])) else 4) if cfg.samples == "auto" else cfg.samples
        samples = min(wanted, ctx.max_samples) if wanted > 1 else 0
        self.samples = samples  # what the framebuffers use
        # All views go into one atlas read back once: llvmpipe then rasterises the views in parallel
        # instead of stalling on a read per view.
        self._cols = int(np.ceil(np.sqrt(cfg.num_views)))
        self._rows = -(-cfg.num_views // self._cols)
        size = (self._cols * cfg.size, self._rows * cfg.size)
        self._fbo = ctx.framebuffer(
            ctx.renderbuffer(size, 3, samples=samples), ctx.depth_renderbuffer(size, samples=samples)
        )
        # Multisampled buffers cannot be read directly: resolve into a single-sample one first.
        self._resolve = ctx.framebuffer(ctx.renderbuffer(size, 3)) if samples else self._fbo
        self._max_texture = int(ctx.info["GL_MAX_TEXTURE_SIZE"])
        light = np.asarray(cfg.light_dir, dtype=np.float64)
        for prog in self._programs.values():
            prog["light_dir"].value = tuple(light / np.linalg.norm(light))
            prog["ambient"].value, prog["diffuse"].value = cfg.ambient, cfg.diffuse
            if "no_color" in prog:  # only read without face colours
                prog["no_color"].value = NO_COLOR
        self._poses = camera_poses(cfg)
        self._views = [np.linalg.inv(p.astype(np.float64)) for p in self._poses]  # world -> camera
        self._proj = perspective(cfg)

    @property
    def device(self) -> str:
        """The OpenGL renderer string, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)" or the GPU's name."""
        ctx = self._context()
        return str(self._gl.submit(lambda: ctx.info["GL_RENDERER"]).result())

    def render(self, mesh: Mesh) -> Views:
        """Render ``mesh`` from every pose; raises ``MeshError`` for meshes with nothing to draw."""
        ctx = self._context()
        _check(mesh)
        order, groups = _face_groups(mesh)
        norm = normalisation(mesh.vertices, mesh.faces)
        images = self._gl.submit(self._render_gl, ctx, mesh, order, groups, norm).result()
        return Views(
            images=images,
            poses=self._poses.copy(),
            intrinsics=intrinsics(self.cfg),
            normalization=norm.astype(np.float32),
        )

    def _render_gl(self, ctx: Any, mesh: Mesh, order: np.ndarray, groups: list, norm: np.ndarray) -> np.ndarray:
        with ctx:  # current on the GL thread (a no-op after the first render)
            created: list[Any] = []
            try:
                prog, vao, textures = self._upload(mesh, order, groups, created)
                return self._draw(prog, vao, textures, groups, norm)
            finally:
                for obj in reversed(created):
                    obj.release()

    def _upload(self, mesh: Mesh, order: np.ndarray, groups: list, created: list) -> tuple[Any, Any, dict]:
        """GL objects for ``mesh`` (each appended to ``created``): the program, vertex array, textures."""
        ctx, prog = self._ctx, self._programs[mesh.face_colors is not None]
        vbo = ctx.buffer(_vertex_data(mesh))
        created.append(vbo)
        ibo = ctx.buffer(mesh.faces[order].astype(np.int32))
        created.append(ibo)
        if mesh.face_colors is not None:
            face_ssbo = ctx.buffer(_rgba8(mesh.face_colors[order]))
            created.append(face_ssbo)
            face_ssbo.bind_to_storage_buffer(0)
        vao = ctx.vertex_array(prog, [(vbo, "3f 2f 3f", "in_pos", "in_uv", "in_col")], ibo, index_element_size=4)
        created.append(vao)
        textures = {}
        for tex_id, _, _ in groups:
            if tex_id >= 0:
                textures[tex_id] = self._texture(mesh.textures[tex_id])
                created.append(textures[tex_id])
        prog["has_vertex_colors"].value = mesh.vertex_colors is not None
        return prog, vao, textures

    def _texture(self, image: np.ndarray) -> Any:
        img = np.asarray(image)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        step = -(-max(img.shape[:2]) // self._max_texture)  # ceil: stride down oversized images
        img = np.ascontiguousarray(img[::step, ::step, :3], dtype=np.uint8)
        # Row 0 (image top) is uploaded first, i.e. at t = 0: glTF UVs sample it without a flip.
        tex = self._ctx.texture((img.shape[1], img.shape[0]), 3, img, alignment=1)
        tex.build_mipmaps()
        tex.filter = (self._ctx.LINEAR_MIPMAP_LINEAR, self._ctx.LINEAR)
        return tex

    def _draw(self, prog: Any, vao: Any, textures: dict, groups: list, norm: np.ndarray) -> np.ndarray:
        """All views into the atlas, then (K, H, W, 3) uint8 with each image's top row first."""
        ctx, size = self._ctx, self.cfg.size
        self._fbo.use()
        ctx.enable(ctx.DEPTH_TEST)
        self._fbo.clear(*self.cfg.background, 1.0, depth=1.0)
        for i, view in enumerate(self._views):
            row, col = divmod(i, self._cols)
            tile = (col * size, (self._rows - 1 - row) * size, size, size)  # GL counts y from the bottom
            ctx.viewport = ctx.scissor = tile  # the scissor keeps each view inside its own tile
            model_view = view @ norm
            prog["model_view"].write(model_view.T.astype(np.float32).tobytes())  # GL is column-major
            prog["mvp"].write((self._proj @ model_view).T.astype(np.float32).tobytes())
            for tex_id, first, count in groups:
                prog["textured"].value = tex_id >= 0
                if tex_id >= 0:
                    textures[tex_id].use(0)
                    prog["tex"].value = 0
                if "face_offset" in prog:
                    prog["face_offset"].value = first
                vao.render(ctx.TRIANGLES, vertices=3 * count, first=3 * first)
        ctx.scissor = None  # so the next clear covers the whole atlas
        if self._resolve is not self._fbo:
            ctx.copy_framebuffer(self._resolve, self._fbo)
        raw = self._resolve.read(components=3, alignment=1)
        atlas = np.frombuffer(raw, dtype=np.uint8).reshape(self._rows * size, self._cols * size, 3)[::-1]
        tiles = atlas.reshape(self._rows, size, self._cols, size, 3).swapaxes(1, 2).reshape(-1, size, size, 3)
        return np.ascontiguousarray(tiles[: self.cfg.num_views])

    def _context(self) -> Any:
        if self._ctx is None:
            raise RenderError("the renderer is closed")
        return self._ctx

    def close(self) -> None:
        """Release the context and everything on it; the renderer cannot be used afterwards."""
        if self._ctx is not None:
            self._gl.submit(self._ctx.release).result()
            self._ctx = None
        self._gl.shutdown()

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _create_context(device_index: int | None) -> Any:
    try:
        import moderngl
    except ImportError as err:
        raise RenderError("moderngl is not installed: pip install 'uni3d-ray[data]'") from err
    kwargs = {"backend": "egl", "require": 430}
    if device_index is not None:
        kwargs["device_index"] = device_index
    try:
        return moderngl.create_standalone_context(**kwargs)
    except Exception as err:  # glcontext raises plain Exceptions with the EGL call that failed
        where = f" (device_index={device_index})" if device_index is not None else ""
        raise RenderError(f"no EGL device available{where}: {_EGL_HINT}; cause: {err}") from err
