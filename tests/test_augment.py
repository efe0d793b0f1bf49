"""Tests of the batched point-cloud augmentation (docs/method.md §6) on generated clouds."""

from __future__ import annotations

import math

import pytest
import torch

from uni3d.augment import AugmentConfig, augment, normalize_unit_sphere, rotation_matrices

# Every random step off: augment must reduce to unit-sphere normalisation.
NO_AUG = AugmentConfig(scale=(1.0, 1.0), shift=0.0, rot_sigma=0.0, up_rotation=False, color_drop_prob=0.0)


def _clouds(batch: int = 4, num_points: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(batch, num_points, 3, generator=g)
    # Clouds of very different sizes and offsets.
    xyz = xyz * torch.logspace(-2, 2, batch)[:, None, None] + torch.arange(batch)[:, None, None] * 10
    rgb = torch.rand(batch, num_points, 3, generator=g)
    return torch.cat([xyz, rgb], dim=-1)  # (B, N, 6)


def test_normalize_unit_sphere_batched() -> None:
    xyz = _clouds()[..., :3]
    out = normalize_unit_sphere(xyz)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.norm(dim=-1).amax(dim=1), torch.ones(4))
    # Unbatched input gives the same result as its row of the batch.
    torch.testing.assert_close(normalize_unit_sphere(xyz[2]), out[2])


def test_normalize_hand_case() -> None:
    xyz = torch.tensor([[1.0, 1.0, 1.0], [3.0, 1.0, 1.0]])  # centroid (2, 1, 1), radius 1
    torch.testing.assert_close(normalize_unit_sphere(xyz), torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_rotation_matrices_are_rotations(axis: str) -> None:
    angles = torch.linspace(-3.0, 6.0, 7, dtype=torch.float64)
    r = rotation_matrices(angles, axis)
    assert r.shape == (7, 3, 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(7, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(7, dtype=torch.float64))


def test_rotation_hand_cases() -> None:
    # Right-hand rule, column vectors: +90° about y takes +x to -z and +z to +x; about z takes +x to +y.
    ry = rotation_matrices(torch.tensor([math.pi / 2]), "y")[0]
    torch.testing.assert_close(ry @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, -1.0]))
    torch.testing.assert_close(ry @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]))
    rz = rotation_matrices(torch.tensor([math.pi / 2]), "z")[0]
    torch.testing.assert_close(rz @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))
    rx = rotation_matrices(torch.tensor([math.pi / 2]), "x")[0]
    torch.testing.assert_close(rx @ torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))


def test_augment_keeps_shape_dtype_device_and_input() -> None:
    pc = _clouds()
    before = pc.clone()
    out = augment(pc, generator=torch.Generator().manual_seed(1))
    assert out.shape == pc.shape and out.dtype == pc.dtype and out.device == pc.device
    assert torch.equal(pc, before)
    assert not torch.equal(out[..., :3], normalize_unit_sphere(pc[..., :3]))  # it did something
    # Rotations preserve norms: the radius after augmentation is scale x |normalised point + shift|.
    assert out[..., :3].norm(dim=-1).amax() <= 1.25 * (1 + 0.1 * math.sqrt(3)) + 1e-5


def test_augment_is_deterministic_with_a_seeded_generator() -> None:
    pc = _clouds()
    a = augment(pc, generator=torch.Generator().manual_seed(7))
    b = augment(pc, generator=torch.Generator().manual_seed(7))
    c = augment(pc, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_color_drop() -> None:
    pc = _clouds(batch=2000, num_points=8)
    out = augment(pc, AugmentConfig(), torch.Generator().manual_seed(0))
    dropped = (out[..., 3:] == 0.4).all(dim=-1).all(dim=-1)  # (B,)
    kept = (out[..., 3:] == pc[..., 3:]).all(dim=-1).all(dim=-1)  # (B,)
    assert (dropped ^ kept).all()  # every cloud is either fully dropped or untouched
    # 2000 fair coin flips: standard deviation of the fraction ~0.011.
    assert abs(dropped.float().mean().item() - 0.5) < 0.05


def test_no_augmentation_equals_normalisation() -> None:
    pc = _clouds()
    out = augment(pc, NO_AUG, torch.Generator().manual_seed(0))
    assert torch.equal(out[..., :3], normalize_unit_sphere(pc[..., :3]))
    assert torch.equal(out[..., 3:], pc[..., 3:])


def test_scale_range() -> None:
    pc = _clouds(batch=500, num_points=16)
    cfg = AugmentConfig(shift=0.0, rot_sigma=0.0, up_rotation=False, color_drop_prob=0.0)
    radius = augment(pc, cfg, torch.Generator().manual_seed(0))[..., :3].norm(dim=-1).amax(dim=1)  # (B,)
    assert radius.min() >= 0.8 - 1e-6 and radius.max() <= 1.25 + 1e-6
    # The draws cover the range rather than sticking to one value.
    assert radius.min() < 0.85 and radius.max() > 1.2


def test_rotations_preserve_radius_and_up_rotation_keeps_y() -> None:
    pc = _clouds()
    cfg = AugmentConfig(scale=(1.0, 1.0), shift=0.0, rot_sigma=0.0, up_rotation=True, color_drop_prob=0.0)
    out = augment(pc, cfg, torch.Generator().manual_seed(0))
    ref = normalize_unit_sphere(pc[..., :3])
    torch.testing.assert_close(out[..., 1], ref[..., 1])  # y is the up axis
    torch.testing.assert_close(out[..., :3].norm(dim=-1), ref.norm(dim=-1))


def test_small_rotation_angle_is_clipped() -> None:
    pc = _clouds(batch=200)
    # sigma far above the clip: every angle hits ±0.18, and the composed rotation moves points by
    # at most about 3 x 0.18 rad (one per axis) on the unit sphere.
    cfg = AugmentConfig(scale=(1.0, 1.0), shift=0.0, rot_sigma=10.0, up_rotation=False, color_drop_prob=0.0)
    out = augment(pc, cfg, torch.Generator().manual_seed(0))[..., :3]
    ref = normalize_unit_sphere(pc[..., :3])
    moved = (out - ref).norm(dim=-1).amax()
    assert 0.1 < moved <= 3 * 0.18 + 1e-5


def test_small_rotation_composes_as_the_official_code() -> None:
    """The official perturbation multiplies the points, as rows, by Rz @ Ry @ Rx (docs/method.md §6)."""
    pc = normalize_unit_sphere(_clouds(batch=4)[..., :3].double())
    cfg = AugmentConfig(scale=(1.0, 1.0), shift=0.0, rot_sigma=0.06, up_rotation=False, color_drop_prob=0.0)
    out = augment(pc, cfg, torch.Generator().manual_seed(3))
    a = (torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.06).clamp(-0.18, 0.18)
    for b in range(4):
        (cx, cy, cz), (sx, sy, sz) = a[:, b].cos().tolist(), a[:, b].sin().tolist()
        rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
        ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
        rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
        torch.testing.assert_close(out[b], pc[b] @ (rz @ ry @ rx), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 6), (2, 64, 4), (2, 0, 6), (2, 3, 64, 6)])
def test_bad_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="pc must have shape"):
        augment(torch.zeros(shape))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="xyz"):
        normalize_unit_sphere(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="axis"):
        rotation_matrices(torch.zeros(2), "w")
    with pytest.raises(ValueError, match="angles"):
        rotation_matrices(torch.zeros(2, 2), "x")
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(1.25, 0.8))
    with pytest.raises(ValueError, match="color_drop_prob"):
        AugmentConfig(color_drop_prob=1.5)
