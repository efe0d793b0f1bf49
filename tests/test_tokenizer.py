"""FPS, kNN and grouping against answers known by hand and brute force (docs/method.md §2)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import random_cloud
from official_reference import kernel_fps

from uni3d.tokenizer import MiniPointNet, PatchDropout, farthest_point_sample, group_points

HAS_NUMBA = importlib.util.find_spec("numba") is not None  # the CPU kernel: the [cpu] extra (in make setup's [all])
BACKENDS = ["torch", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_on_a_line_picks_ends_then_middles(backend: str) -> None:
    # Points at x = 1..5 on a line: start at index 0 (x=1), farthest is x=5, then x=3 (ties
    # between x=2 and x=4 are broken later; x=3 is strictly the farthest from {1, 5}).
    xyz = torch.tensor([[[1.0, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 0]]])
    idx, _ = farthest_point_sample(xyz, 3, backend=backend)
    assert idx.tolist() == [[0, 4, 2]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_skips_points_near_the_origin(backend: str) -> None:
    # Index 1 sits at |p|² = 1e-4 <= 1e-3: the official kernel never chooses it, although it is
    # the farthest from the start point (5, 0, 0); (1, 1, 0) is chosen instead.
    xyz = torch.tensor([[[5.0, 0, 0], [0.01, 0, 0], [1, 1, 0], [4, 0, 0]]])
    idx, _ = farthest_point_sample(xyz, 3, backend=backend)
    assert idx[0, :2].tolist() == [0, 2]
    assert 1 not in idx[0].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_starts_at_index_zero_even_near_origin(backend: str) -> None:
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [-2, 0, 0]]])
    idx, _ = farthest_point_sample(xyz, 2, backend=backend)
    assert idx.tolist() == [[0, 2]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_when_all_candidates_are_near_origin_returns_index_zero(backend: str) -> None:
    # The kernel's best index starts at 0 and is never updated when every candidate is skipped.
    xyz = torch.tensor([[[0.001, 0, 0], [0.002, 0, 0], [0.003, 0, 0]]])
    idx, _ = farthest_point_sample(xyz, 3, backend=backend)
    assert idx.tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_matches_the_sequential_kernel_on_random_clouds(backend: str) -> None:
    pc = random_cloud(3, 400, seed=1)
    pc[1, 5:20, :3] *= 0.01  # some points inside the skip radius
    idx, _ = farthest_point_sample(pc[..., :3], 48, backend=backend)
    for b in range(3):
        expected = kernel_fps(pc[b, :, :3].numpy().astype(np.float32), 48)
        assert idx[b].tolist() == expected.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_is_batched_independently(backend: str) -> None:
    pc = random_cloud(4, 300, seed=2)
    batched, _ = farthest_point_sample(pc[..., :3], 20, backend=backend)
    for b in range(4):
        single, _ = farthest_point_sample(pc[b : b + 1, :, :3], 20, backend=backend)
        assert torch.equal(batched[b], single[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_equals_brute_force(backend: str) -> None:
    pc = random_cloud(2, 500, seed=3)
    xyz = pc[..., :3]
    centres_idx, nbrs = farthest_point_sample(xyz, 16, knn=10, backend=backend)
    centres = xyz.gather(1, centres_idx.unsqueeze(-1).expand(-1, -1, 3))
    brute = torch.cdist(centres.double(), xyz.double()).argsort(dim=-1)[..., :10]
    assert nbrs.shape == (2, 16, 10)
    assert torch.equal(nbrs.sort(dim=-1).values, brute.sort(dim=-1).values)
    # A group contains its own centre.
    assert bool((nbrs == centres_idx.unsqueeze(-1)).any(dim=-1).all())


def test_group_points_features_are_relative_xyz_and_rgb() -> None:
    pc = random_cloud(2, 256, seed=4)
    features, centres = group_points(pc, num_group=8, group_size=4)
    assert features.shape == (2, 8, 4, 6) and centres.shape == (2, 8, 3)
    # Every feature row is some input point minus its centre, with that point's colour.
    for b in range(2):
        for g in range(8):
            for k in range(4):
                xyz = features[b, g, k, :3] + centres[b, g]
                match = (pc[b, :, :3] - xyz).norm(dim=-1).argmin()
                assert torch.allclose(pc[b, match, 3:], features[b, g, k, 3:])
    # The nearest neighbour of each centre is the centre itself: offset zero.
    assert torch.allclose(features[..., :3].norm(dim=-1).amin(dim=-1), torch.zeros(2, 8))


def test_mini_pointnet_is_order_invariant_within_a_patch() -> None:
    net = MiniPointNet(64).eval()
    patches = torch.randn(2, 5, 16, 6)
    shuffled = patches[:, :, torch.randperm(16)]
    assert net(patches).shape == (2, 5, 64)
    assert torch.allclose(net(patches), net(shuffled), atol=1e-6)


def test_patch_dropout_only_in_training() -> None:
    drop = PatchDropout(0.5)
    tokens = torch.arange(2 * 11 * 3, dtype=torch.float32).view(2, 11, 3)
    drop.eval()
    assert torch.equal(drop(tokens), tokens)
    drop.train()
    out = drop(tokens)
    assert out.shape == (2, 1 + 5, 3)  # CLS + int(10 * 0.5)
    assert torch.equal(out[:, 0], tokens[:, 0])
    kept = out[:, 1:, 0]
    assert bool(torch.isin(kept, tokens[:, 1:, 0]).all())
    assert all(len(set(row.tolist())) == 5 for row in kept)  # no patch twice


@pytest.mark.parametrize("prob,num,keep", [(0.9, 10, 1), (0.99, 10, 1), (0.25, 8, 6)])
def test_patch_dropout_keep_count(prob: float, num: int, keep: int) -> None:
    drop = PatchDropout(prob).train()
    assert drop(torch.randn(1, 1 + num, 4)).shape[1] == 1 + keep


def _official_size_clouds() -> torch.Tensor:
    """(5, 10000, 3): a ball, a sphere's surface, a flat square with points at the origin, a cloud whose
    points all come twice (every FPS step ties), and a thin line: the shapes pruning could get wrong."""
    rng = np.random.default_rng(7)
    ball = rng.normal(size=(10000, 3))
    ball *= rng.uniform(0, 1, (10000, 1)) ** (1 / 3) / np.linalg.norm(ball, axis=1, keepdims=True)
    sphere = rng.normal(size=(10000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    square = np.c_[rng.uniform(-1, 1, (10000, 2)), np.zeros(10000)]
    square[rng.choice(np.arange(1, 10000), 300, replace=False)] *= 1e-3  # inside the skip radius: never centres
    twice = np.repeat(rng.uniform(-1, 1, (5000, 3)), 2, axis=0)
    line = np.c_[np.linspace(-1, 1, 10000), 1e-4 * rng.normal(size=(10000, 2))]
    return torch.from_numpy(np.stack([ball, sphere, square, twice, line])).float()


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_the_cpu_kernel_chooses_the_torch_loops_centres_and_groups_at_the_official_size() -> None:
    xyz = _official_size_clouds()
    ref_idx, ref_nbrs = farthest_point_sample(xyz, 512, knn=64, backend="torch")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the clouds one after another ...
        idx, nbrs = farthest_point_sample(xyz, 512, knn=64, backend="cpu")
        torch.set_num_threads(3)  # ... and three at once, on the kernel's thread pool
        assert all(
            torch.equal(a, b) for a, b in zip((idx, nbrs), farthest_point_sample(xyz, 512, 64, "cpu"), strict=True)
        )
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(idx, ref_idx)
    # groups as sets; on the duplicated cloud a tie at the 64th distance may pick the other copy of a point
    same = nbrs.sort(dim=-1).values == ref_nbrs.sort(dim=-1).values
    assert bool(same[[0, 1, 2, 4]].all())
    twin = (nbrs // 2).sort(dim=-1).values == (ref_nbrs // 2).sort(dim=-1).values  # copies 2i and 2i+1
    assert bool(twin[3].all())


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_auto_takes_the_cpu_kernel_for_cpu_tensors_with_the_same_features() -> None:
    pc = random_cloud(2, 5000, seed=9)
    auto, auto_centres = group_points(pc, num_group=64, group_size=32)  # backend "auto": the kernel at 5000 points
    idx, nbrs = farthest_point_sample(pc[..., :3], 64, knn=32, backend="torch")
    ref_centres = pc[..., :3].gather(1, idx.unsqueeze(-1).expand(-1, -1, 3))
    assert torch.equal(auto_centres, ref_centres)
    # the same points in each group, maybe in another order: compare sorted rows
    ref = torch.stack([pc[b, nbrs[b]] for b in range(2)])  # (B, G, K, 6) absolute points
    ref[..., :3] -= ref_centres.unsqueeze(2)

    def rows(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(-1, t.shape[-2], 6)
        return torch.stack([g[torch.from_numpy(np.lexsort(g.T.numpy()[::-1].copy()))] for g in flat])

    assert torch.equal(rows(auto), rows(ref))
    with pytest.raises(ValueError, match="backend must be"):
        farthest_point_sample(pc[..., :3], 4, backend="numba")


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_auto_takes_the_kernel_for_big_cpu_clouds_and_the_loop_for_small_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    import uni3d.tokenizer as tokenizer

    def refuse(*_: object) -> None:
        raise AssertionError("the other backend was taken")

    big, small = random_cloud(1, tokenizer.CPU_KERNEL_MIN_POINTS, seed=1), random_cloud(1, 1024, seed=1)
    with monkeypatch.context() as m:
        m.setattr(tokenizer, "_torch_fps_knn", refuse)
        group_points(big, num_group=32, group_size=16)
    with monkeypatch.context() as m:
        m.setattr(tokenizer, "_cpu_fps_knn", refuse)
        group_points(small, num_group=32, group_size=16)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_the_cpu_kernel_refuses_what_the_torch_loop_cannot_do() -> None:
    pc = random_cloud(1, 64, seed=3)[..., :3]
    with pytest.raises(ValueError, match="groups of 65 from"):
        farthest_point_sample(pc, 8, knn=65, backend="cpu")  # more neighbours than points
    pc[0, 5, 1] = float("nan")
    with pytest.raises(ValueError, match="must be finite"):
        farthest_point_sample(pc, 8, knn=4, backend="cpu")


def _awkward_clouds(n: int = 3000) -> dict[str, np.ndarray]:
    """Clouds whose grids are awkward: no extent on an axis or any, or almost none, a dense cluster far from one
    point (most cells empty), huge and tiny scales, integer points (many tied distances), two far clusters."""
    rng = np.random.default_rng(11)
    thin = np.c_[rng.uniform(-1, 1, (n, 2)), np.zeros(n)]
    thin[5, 2] = 1e-30  # an axis of almost no extent: its cells are 1e-30 wide
    return {
        "flat": np.c_[rng.uniform(-1, 1, (n, 2)), np.zeros(n)],
        "thin": thin,
        "one point": np.full((n, 3), 0.5),
        "cluster and outlier": np.r_[rng.normal(size=(n - 1, 3)) * 1e-3 + 0.3, [[100.0, 100.0, 100.0]]],
        "huge": rng.normal(size=(n, 3)) * 1e4,
        "tiny": rng.normal(size=(n, 3)) * 1e-6 + 1,
        "integers": rng.integers(-3, 4, (n, 3)).astype(float),
        "two clusters": np.r_[rng.normal(size=(n // 2, 3)) * 0.01, rng.normal(size=(n - n // 2, 3)) * 0.01 + 5],
    }


def _sorted_dists(xyz: torch.Tensor, centres: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    d = (xyz[groups] - centres).square()  # the torch loop's float32 arithmetic
    return (d[..., 0] + d[..., 1] + d[..., 2]).sort(dim=-1).values


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("name", list(_awkward_clouds()))
def test_the_cpu_kernel_matches_the_torch_loop_on_awkward_clouds(name: str) -> None:
    xyz = torch.from_numpy(_awkward_clouds()[name]).float()[None]
    for num, k in ((64, 32), (7, 3000)):  # the second: every point in every group
        ref_idx, ref_nbrs = farthest_point_sample(xyz, num, knn=k, backend="torch")
        idx, nbrs = farthest_point_sample(xyz, num, knn=k, backend="cpu")
        assert torch.equal(idx, ref_idx)

        # the same distances (ties at the k-th may pick other points at that distance), each point once
        centres = xyz[0, idx[0]].unsqueeze(1)
        assert torch.equal(_sorted_dists(xyz[0], centres, nbrs[0]), _sorted_dists(xyz[0], centres, ref_nbrs[0]))
        assert all(len(set(row.tolist())) == k for row in nbrs[0])


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_the_kernel_gathers_into_the_given_rows_and_torch_gathers_when_points_need_gradients() -> None:
    from uni3d import grouping_cpu

    pc = random_cloud(2, 5000, seed=5)
    kernel, kernel_centres = group_points(pc, 32, 16, backend="cpu")
    rows = np.full((32, 16, 6), np.nan, np.float32), np.full((32, 3), np.nan, np.float32)
    grouping_cpu.group(pc[1].numpy(), 32, 16, out=rows)
    assert np.array_equal(rows[0], kernel[1].numpy()) and np.array_equal(rows[1], kernel_centres[1].numpy())
    with pytest.raises(ValueError, match="out has shapes"):
        grouping_cpu.group(pc[1].numpy(), 32, 8, out=rows)
    leaf = pc.clone().requires_grad_()
    features, centres = group_points(leaf, 32, 16, backend="cpu")  # indices from the kernel, gather by torch
    assert torch.equal(features.detach(), kernel) and torch.equal(centres.detach(), kernel_centres)
    features.sum().backward()
    assert leaf.grad is not None and bool(leaf.grad[..., 3:].gt(0).any())
