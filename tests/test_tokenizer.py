"""FPS, kNN and grouping against answers known by hand and brute force (docs/method.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_cloud
from official_reference import kernel_fps

from uni3d.tokenizer import MiniPointNet, PatchDropout, farthest_point_sample, group_points


def test_fps_on_a_line_picks_ends_then_middles() -> None:
    # Points at x = 1..5 on a line: start at index 0 (x=1), farthest is x=5, then x=3 (ties
    # between x=2 and x=4 are broken later; x=3 is strictly the farthest from {1, 5}).
    xyz = torch.tensor([[[1.0, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 0]]])
    idx, _ = farthest_point_sample(xyz, 3)
    assert idx.tolist() == [[0, 4, 2]]


def test_fps_skips_points_near_the_origin() -> None:
    # Index 1 sits at |p|² = 1e-4 <= 1e-3: the official kernel never chooses it, although it is
    # the farthest from the start point (5, 0, 0); (1, 1, 0) is chosen instead.
    xyz = torch.tensor([[[5.0, 0, 0], [0.01, 0, 0], [1, 1, 0], [4, 0, 0]]])
    idx, _ = farthest_point_sample(xyz, 3)
    assert idx[0, :2].tolist() == [0, 2]
    assert 1 not in idx[0].tolist()


def test_fps_starts_at_index_zero_even_near_origin() -> None:
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [-2, 0, 0]]])
    idx, _ = farthest_point_sample(xyz, 2)
    assert idx.tolist() == [[0, 2]]


def test_fps_when_all_candidates_are_near_origin_returns_index_zero() -> None:
    # The kernel's best index starts at 0 and is never updated when every candidate is skipped.
    xyz = torch.tensor([[[0.001, 0, 0], [0.002, 0, 0], [0.003, 0, 0]]])
    idx, _ = farthest_point_sample(xyz, 3)
    assert idx.tolist() == [[0, 0, 0]]


def test_fps_matches_the_sequential_kernel_on_random_clouds() -> None:
    pc = random_cloud(3, 400, seed=1)
    pc[1, 5:20, :3] *= 0.01  # some points inside the skip radius
    idx, _ = farthest_point_sample(pc[..., :3], 48)
    for b in range(3):
        expected = kernel_fps(pc[b, :, :3].numpy().astype(np.float32), 48)
        assert idx[b].tolist() == expected.tolist()


def test_fps_is_batched_independently() -> None:
    pc = random_cloud(4, 300, seed=2)
    batched, _ = farthest_point_sample(pc[..., :3], 20)
    for b in range(4):
        single, _ = farthest_point_sample(pc[b : b + 1, :, :3], 20)
        assert torch.equal(batched[b], single[0])


def test_knn_equals_brute_force() -> None:
    pc = random_cloud(2, 500, seed=3)
    xyz = pc[..., :3]
    centres_idx, nbrs = farthest_point_sample(xyz, 16, knn=10)
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
