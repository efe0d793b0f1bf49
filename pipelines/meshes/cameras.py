"""The views a build renders: their configuration, the ring of camera poses, the pinhole intrinsics, the projection.

Conventions: poses are OpenGL camera-to-world matrices (x right, y up, camera looks along -z), Y is world up;
``intrinsics`` is the pinhole matrix in pixels (for OpenCV-style use flip the camera's y and z axes). The object
is first normalised to the unit sphere (bounding-box centre, farthest used vertex at radius 1), so every view
frames it the same way. No GL here: ``pipelines.meshes.render`` draws these views.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np


@dataclass
class RenderConfig:
    num_views: int = 12
    size: int = 224  # square images, pixels
    elevation_deg: float | tuple[float, ...] = 30.0  # one ring, or cycled per view if a tuple
    azimuth_offset_deg: float = 0.0  # azimuth of view 0; 0 = camera on +Z looking at the front
    fov_deg: float = 40.0  # vertical = horizontal field of view
    margin: float = 1.05  # camera distance over the distance at which the unit sphere just fits
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.45
    diffuse: float = 0.55
    light_dir: tuple[float, float, float] = (0.3, 0.5, 1.0)  # camera frame: upper right, behind camera
    # MSAA samples, 0 = off (capped to what the device supports); "auto": 4 on a GPU, 0 on a software rasteriser
    # (llvmpipe: 2-3x faster without, and the teacher's embeddings barely move; BENCHMARKS.md "Rendering")
    samples: int | str = "auto"
    device_index: int | None = None  # EGL device; None = the default one

    def __post_init__(self) -> None:
        elevations = np.atleast_1d(np.asarray(self.elevation_deg, dtype=np.float64))
        if self.num_views < 1 or self.size < 1 or not 0 < self.fov_deg < 180 or self.margin < 1:
            raise ValueError(f"invalid RenderConfig: {self}")
        whole = isinstance(self.samples, numbers.Integral) and not isinstance(self.samples, bool)
        if self.samples != "auto" and (not whole or self.samples < 0):
            raise ValueError(f"samples must be 'auto' or an int >= 0, got {self.samples!r}")
        if elevations.size == 0 or np.any(np.abs(elevations) >= 90):
            raise ValueError(f"elevations must be in (-90, 90) degrees, got {self.elevation_deg}")

    @property
    def distance(self) -> float:
        """Camera distance from the origin: the unit sphere fits the view with ``margin`` to spare."""
        return self.margin / float(np.sin(np.radians(self.fov_deg) / 2))


@dataclass
class Views:
    images: np.ndarray  # (K, H, W, 3) uint8, row 0 = top
    poses: np.ndarray  # (K, 4, 4) float32 camera-to-world (OpenGL camera axes), normalised object frame
    intrinsics: np.ndarray  # (3, 3) float32 pinhole matrix in pixels, shared by all views
    normalization: np.ndarray  # (4, 4) float32 mesh coordinates -> the unit-sphere frame of ``poses``


def camera_poses(cfg: RenderConfig) -> np.ndarray:
    """(K, 4, 4) float32 camera-to-world poses on a ring around the origin, looking at it, Y up."""
    k = np.arange(cfg.num_views)
    az = np.radians(cfg.azimuth_offset_deg) + 2 * np.pi * k / cfg.num_views
    elevations = np.atleast_1d(np.asarray(cfg.elevation_deg, dtype=np.float64))
    el = np.radians(elevations[k % elevations.size])
    eye = cfg.distance * np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], -1)
    z = eye / np.linalg.norm(eye, axis=-1, keepdims=True)  # camera looks along -z, at the origin
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(z, x)
    poses = np.zeros((cfg.num_views, 4, 4))
    poses[:, :3, 0], poses[:, :3, 1], poses[:, :3, 2], poses[:, :3, 3] = x, y, z, eye
    poses[:, 3, 3] = 1.0
    return poses.astype(np.float32)


def intrinsics(cfg: RenderConfig) -> np.ndarray:
    """(3, 3) pinhole matrix in pixels for a square ``size`` image with field of view ``fov_deg``."""
    focal = cfg.size / 2 / np.tan(np.radians(cfg.fov_deg) / 2)
    return np.array([[focal, 0, cfg.size / 2], [0, focal, cfg.size / 2], [0, 0, 1]], dtype=np.float32)


def perspective(cfg: RenderConfig) -> np.ndarray:
    near, far = max(cfg.distance - 1.5, 1e-2), cfg.distance + 1.5  # the object lies within radius 1
    f = 1 / np.tan(np.radians(cfg.fov_deg) / 2)
    return np.array(
        [[f, 0, 0, 0], [0, f, 0, 0], [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)], [0, 0, -1, 0]]
    )


def normalisation(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(4, 4) transform taking the used vertices into the unit sphere around their box centre."""
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True  # stray unreferenced vertices must not change the framing
    pts = vertices[used].astype(np.float64)
    centre = (pts.min(0) + pts.max(0)) / 2
    radius = float(np.sqrt(((pts - centre) ** 2).sum(1).max())) or 1.0
    m = np.eye(4) / radius
    m[:3, 3], m[3, 3] = -centre / radius, 1.0
    return m
