"""Tests of the Uni3D contrastive loss (docs/method.md §5) against hand computations and a simulated 2-rank run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from uni3d.loss import LossConfig, Uni3DLoss, clamp_logit_scale_


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_loss_matches_hand_computation() -> None:
    # Inputs are not unit length: the loss must normalise them.
    p = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # -> (1, 0), (0, 1)
    t = torch.tensor([[3.0, 4.0], [2.0, 0.0]])  # -> (0.6, 0.8), (1, 0)
    i = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    s = 2.0
    out = Uni3DLoss()(p, t, i, torch.tensor([True, True]), torch.tensor(math.log(s)))
    # P·Tᵀ = [[0.6, 1], [0.8, 0]]; rows give P->T, columns give T->P (labels 0, 1).
    pt = (-s * 0.6 + lse(s * 0.6, s * 1.0)) + (-0.0 + lse(s * 0.8, 0.0))
    tp = (-s * 0.6 + lse(s * 0.6, s * 0.8)) + (-0.0 + lse(s * 1.0, 0.0))
    loss_text = 0.5 * (pt / 2 + tp / 2)
    # P·Iᵀ = [[0, 1], [1, 0]] is symmetric: both directions are the same.
    pi = 2 * (-0.0 + lse(0.0, s))
    loss_image = 0.5 * (pi / 2 + pi / 2)
    assert out["loss_text"].item() == pytest.approx(loss_text, rel=1e-6)
    assert out["loss_image"].item() == pytest.approx(loss_image, rel=1e-6)
    assert out["loss"].item() == pytest.approx(loss_text + loss_image, rel=1e-6)


def test_a_shape_without_image_is_neither_positive_nor_negative() -> None:
    a = 1 / math.sqrt(2)
    p = torch.eye(3)
    i = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # -> (a, a, 0), e0, e2
    out = Uni3DLoss()(p, p.clone(), i, torch.tensor([True, False, True]), torch.tensor(0.0))
    # Text: P·Tᵀ = identity, every row and column has CE = -1 + lse(1, 0, 0).
    assert out["loss_text"].item() == pytest.approx(-1 + lse(1, 0, 0), rel=1e-6)
    # P->I, logits P·Iᵀ = Iᵀ with shape 1's column masked: row 0 = (a, -, 0), row 2 = (0, -, 1); row 1 ignored.
    pi = ((-a + lse(a, 0)) + (-1 + lse(0, 1))) / 2
    # I->P, logits I·Pᵀ = I: row 0 = (a, a, 0), row 2 = (0, 0, 1) (shape 1's points stay a negative).
    ip = ((-a + lse(a, a, 0)) + (-1 + lse(0, 0, 1))) / 2
    assert out["loss_image"].item() == pytest.approx(0.5 * (pi + ip), rel=1e-6)
    # Today's placeholder (shape 1's image e0 kept, or a zero vector) would be scored against by row 0.
    assert -a + lse(a, 0) < -a + lse(a, 0, 0) < -a + lse(a, 1, 0)


def test_image_terms_drop_the_image_less_rows_and_keep_their_points_as_candidates() -> None:
    torch.manual_seed(0)
    p, t, i = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8)
    has = torch.tensor([True, False, True, True, False])
    i_bad = i.clone()
    i_bad[~has] = float("nan")  # never read: any values do
    out = Uni3DLoss()(p, t, i_bad, has, torch.tensor(2.0))
    # I->P keeps every shape's points as candidates; P->I only the shapes with an image.
    pn, inn = F.normalize(p, dim=-1), F.normalize(i, dim=-1)
    s = math.exp(2.0)
    rows = torch.nonzero(has).reshape(-1)
    pi = F.cross_entropy(s * pn[rows] @ inn[rows].T, torch.arange(len(rows)))
    ip = F.cross_entropy(s * inn[rows] @ pn.T, rows)
    torch.testing.assert_close(out["loss_image"], 0.5 * (pi + ip))
    assert torch.isfinite(out["loss"])


def test_all_rows_without_image_give_finite_loss_and_gradients() -> None:
    torch.manual_seed(0)
    p = torch.randn(4, 8, requires_grad=True)
    out = Uni3DLoss()(p, torch.randn(4, 8), torch.randn(4, 8), torch.zeros(4, dtype=torch.bool), torch.tensor(2.0))
    assert out["loss_image"].item() == 0.0
    assert out["num_image_rows"].item() == 0
    assert out["acc_image"].item() == 0.0
    assert torch.isfinite(out["loss"]) and out["loss"].item() == pytest.approx(out["loss_text"].item())
    out["loss"].backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_accuracy_on_constructed_case() -> None:
    p = torch.eye(3)
    # P·Tᵀ rows: (1, .8, 0) -> 0 right; (0, .6, .8) -> 2 wrong; (0, 0, .6) -> 2 right.
    t = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.8, 0.6]])
    out = Uni3DLoss()(p, t, t.clone(), torch.tensor([False, True, True]), torch.tensor(0.0))
    assert out["num_correct_text"].item() == 2
    assert out["acc_text"].item() == pytest.approx(200 / 3)
    # Image rows 1 (wrong) and 2 (right) only.
    assert out["num_image_rows"].item() == 2
    assert out["num_correct_image"].item() == 1
    assert out["acc_image"].item() == pytest.approx(50.0)


class FakeGather:
    """Plays all_gather for one rank of a simulated run: returns every rank's slice of what the loss gathers.

    ``full`` holds the global tensors as the loss gathers them (normalised embeddings, image rows of
    image-less shapes zeroed, the has-image flags). ``detach_others`` models
    `torch_distributed_gather(with_grad=False)` (the fix of docs/method.md §5); otherwise the slices stay attached to
    the full tensors, which models the differentiable gather whose backward sums each copy's gradient
    onto its owner.
    """

    def __init__(self, full: list[torch.Tensor], world_size: int, detach_others: bool) -> None:
        self.full, self.world_size, self.detach_others = full, world_size, detach_others

    def __call__(self, t: torch.Tensor) -> list[torch.Tensor]:
        for x in self.full:
            chunks = list(x.chunk(self.world_size))
            if any(c.shape == t.shape and torch.allclose(c, t) for c in chunks):
                return [c.detach() if self.detach_others else c for c in chunks]
        raise AssertionError("gathered an unknown tensor")


def _gathered(p, t, i, has_image) -> list[torch.Tensor]:
    masked = F.normalize(i, dim=-1).masked_fill(~has_image[:, None], 0.0)
    return [F.normalize(p, dim=-1), F.normalize(t, dim=-1), masked, has_image.float()[:, None]]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p, t, i = (torch.randn(4, 3, generator=g).requires_grad_() for _ in range(3))
    # One image-less row per rank, so the per-rank masked means weight rows as the global one does.
    return p, t, i, torch.tensor([True, False, False, True])


def _rank_loss(rank: int, p, t, i, has_image, detach_others: bool) -> dict[str, torch.Tensor]:
    gather = FakeGather(_gathered(p, t, i, has_image), 2, detach_others)
    b = slice(2 * rank, 2 * rank + 2)
    return Uni3DLoss(rank=rank, world_size=2, gather=gather)(p[b], t[b], i[b], has_image[b], torch.tensor(1.5))


def test_two_ranks_with_differentiable_gather_match_single_process() -> None:
    p, t, i, has_image = _batch()
    full = Uni3DLoss()(p, t, i, has_image, torch.tensor(1.5))["loss"]
    full_grads = torch.autograd.grad(full, (p, t, i))
    total = sum(_rank_loss(r, p, t, i, has_image, False)["loss"] for r in (0, 1))
    rank_grads = torch.autograd.grad(total, (p, t, i))
    # Each rank averages over its B local rows, the single process over W·B rows, so the ranks' losses
    # sum to W x the global loss and so do their gradients; DDP's mean over ranks then gives back
    # exactly the single-process gradient.
    assert total.item() == pytest.approx(2 * full.item(), rel=1e-6)
    for got, want in zip(rank_grads, full_grads, strict=True):
        torch.testing.assert_close(got, 2 * want)


def _official_rank_loss(rank: int, p, t, i, has_image) -> torch.Tensor:
    """The official Uni3D formula on one rank of a 2-rank run: every gathered copy is detached (the
    image-less shapes' image columns masked, as here, so that only the gradient path differs)."""
    pn, tn, inn = (F.normalize(x, dim=-1) for x in (p, t, i))
    b = slice(2 * rank, 2 * rank + 2)
    y = torch.arange(2) + 2 * rank
    y_img = torch.where(has_image[b], y, -100)
    s = math.exp(1.5)
    cols = torch.nonzero(has_image).reshape(-1)
    y_col = torch.where(has_image[b], torch.searchsorted(cols, y), -100)  # labels among the image columns
    return 0.5 * (
        F.cross_entropy(s * pn[b] @ tn.detach().T, y) + F.cross_entropy(s * tn[b] @ pn.detach().T, y)
    ) + 0.5 * (
        F.cross_entropy(s * pn[b] @ inn[cols].detach().T, y_col) + F.cross_entropy(s * inn[b] @ pn.detach().T, y_img)
    )


def test_local_slice_keeps_its_gradient_unlike_official_gather() -> None:
    p, t, i, has_image = _batch(1)
    for rank in (0, 1):
        b = slice(2 * rank, 2 * rank + 2)
        local = _rank_loss(rank, p, t, i, has_image, detach_others=True)["loss"]
        (got,) = torch.autograd.grad(local, p)
        # Reference: the same rank's loss with attached copies, keeping only its local rows' gradient.
        (attached,) = torch.autograd.grad(_rank_loss(rank, p, t, i, has_image, False)["loss"], p)
        torch.testing.assert_close(got[b], attached[b])
        assert got.abs().sum() == got[b].abs().sum()  # nothing flows into other ranks' rows
        # Same value as the official formula, different gradient: its T->P and I->P terms train nothing.
        official = _official_rank_loss(rank, p, t, i, has_image)
        assert local.item() == pytest.approx(official.item(), rel=1e-6)
        (official_grad,) = torch.autograd.grad(official, p)
        assert (got[b] - official_grad[b]).abs().max() > 1e-3


def test_rank_offsets_labels() -> None:
    x = torch.eye(4)
    out = _rank_loss(1, x, x.clone(), x.clone(), torch.ones(4, dtype=torch.bool), detach_others=True)
    # Rank 1's rows are global rows 2, 3; with P = T = I each matches its own column.
    assert out["acc_text"].item() == 100.0 and out["acc_image"].item() == 100.0


def test_clamp_logit_scale() -> None:
    param = torch.nn.Parameter(torch.tensor(LossConfig().init_logit_scale))
    assert clamp_logit_scale_(param).item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        param.fill_(10.0)
    assert clamp_logit_scale_(param).item() == pytest.approx(math.log(100))
    with torch.no_grad():
        param.fill_(-1.0)
    assert clamp_logit_scale_(param).item() == 0.0
    assert param.requires_grad
    with pytest.raises(ValueError, match="max_scale"):
        clamp_logit_scale_(param, max_scale=0.5)


@pytest.mark.parametrize(
    ("p_shape", "t_shape", "i_shape", "n_img", "scale_shape", "bad"),
    [
        ((6,), (6,), (6,), 6, (), "point_emb"),
        ((2, 3), (3, 3), (2, 3), 2, (), "text_emb"),
        ((2, 3), (2, 3), (2, 4), 2, (), "image_emb"),
        ((2, 3), (2, 3), (2, 3), 3, (), "has_image"),
        ((2, 3), (2, 3), (2, 3), 2, (2,), "logit_scale"),
    ],
)
def test_bad_shapes_raise(p_shape, t_shape, i_shape, n_img, scale_shape, bad) -> None:
    embs = (torch.zeros(p_shape), torch.zeros(t_shape), torch.zeros(i_shape))
    with pytest.raises(ValueError, match=bad):
        Uni3DLoss()(*embs, torch.ones(n_img, dtype=torch.bool), torch.zeros(scale_shape))


def test_bad_distributed_context_raises() -> None:
    with pytest.raises(ValueError, match="gather"):
        Uni3DLoss(rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        Uni3DLoss(rank=2, world_size=2, gather=lambda t: [t, t])
    loss = Uni3DLoss(rank=0, world_size=2, gather=lambda t: [t])
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="gather returned 1"):
        loss(x, x, x, torch.ones(2, dtype=torch.bool), torch.tensor(0.0))


def _gloo_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from uni3d.loss import torch_distributed_gather

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        p, t, i, has_image = _batch()
        b = slice(2 * rank, 2 * rank + 2)
        for with_grad in (True, False):
            local = [x[b].detach().clone().requires_grad_() for x in (p, t, i)]
            loss = Uni3DLoss(rank, 2, lambda x, w=with_grad: torch_distributed_gather(x, with_grad=w))
            loss(*local, has_image[b], torch.tensor(1.5))["loss"].backward()
            torch.save([x.grad for x in local], f"{out_dir}/grads_{with_grad}_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_torch_distributed_gather_on_two_gloo_ranks(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_gloo_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)

    def rank_grads(with_grad: bool) -> list[torch.Tensor]:  # (p, t, i) grads, each rank's rows stacked
        per_rank = [torch.load(tmp_path / f"grads_{with_grad}_{r}.pt") for r in (0, 1)]
        return [torch.cat(g) for g in zip(*per_rank, strict=True)]

    p, t, i, has_image = _batch()
    # with_grad: the differentiable gather sums every rank's gradient of each copy onto its owner,
    # which gives W x the single-process gradient (see the simulated test above).
    full = Uni3DLoss()(p, t, i, has_image, torch.tensor(1.5))["loss"]
    for got, want in zip(rank_grads(True), torch.autograd.grad(full, (p, t, i)), strict=True):
        torch.testing.assert_close(got, 2 * want)
    # Detached copies: each rank gets only its own loss's gradient, on its own rows.
    per_rank = [torch.autograd.grad(_rank_loss(r, p, t, i, has_image, False)["loss"], (p, t, i)) for r in (0, 1)]
    for k, got in enumerate(rank_grads(False)):
        torch.testing.assert_close(got, torch.cat([per_rank[0][k][:2], per_rank[1][k][2:]]))
