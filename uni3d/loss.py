"""The Uni3D contrastive loss: point embeddings aligned with frozen CLIP text and image embeddings.

Follows docs/method.md §5 (Uni3D, arXiv 2310.06773, as the official release implements it):

    L = ½[CE(s·P·Tᵀ, y) + CE(s·T·Pᵀ, y)] + ½[CE(s·P·Iᵀ, y') + CE(s·I·Pᵀ, y')]

with P, T, I the L2-normalised point, text and image embeddings, s = exp(logit_scale), negatives taken
from every rank (the local rows are scored against the gathered set), y = rank·B + arange(B) and y' = y
with the rows of shapes that have no rendered image set to the ignore index.

A shape without an image has no image column either: its (absent) image is masked out of every row's
point->image softmax over the global batch, so it is neither a positive nor a negative for anyone. The
official code puts a placeholder vector there, a negative that every other shape is scored against;
a zero vector would be a column of logit 0 in every row. Masking makes the point->image term of a batch
with k image-less shapes exactly that of the same batch without them. In the image->point term those
shapes have no row (no image to start from), but their points stay candidates, as every shape's points do.

FIX over the official code: the official all_gather returns detached copies, so with several ranks the
T->P and I->P directions train nothing. Here the gathered list always holds the *local* tensor at
position ``rank``, so each rank's own rows keep their gradient. With detached copies of the other
ranks (`torch_distributed_gather(..., with_grad=False)`) the P->T and P->I gradients are exact, but a
T->P or I->P row only reaches the points of its own rank. With the default ``with_grad=True`` the
other ranks' copies also carry gradient back to their owners, and the summed gradient over ranks equals
exactly world_size x the gradient of the single-process loss on the global batch (DDP's gradient
averaging then recovers the single-process gradient), provided every rank has as many image rows:
each rank averages its image terms over its own image rows, as the official code does.

Distributed context is injected: the loss never reads the rank or calls torch.distributed itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Maps a local (B, E) tensor to world_size tensors, one per rank, in rank order.
GatherFn = Callable[[Tensor], list[Tensor]]


@dataclass
class LossConfig:
    init_logit_scale: float = math.log(1 / 0.07)  # ln(1/0.07) ~ 2.659, as CLIP
    max_logit_scale: float = 100.0  # s is clamped to [1, 100], i.e. logit_scale to [0, ln 100]
    ignore_index: int = -100  # torch's default ignore index for cross_entropy


def torch_distributed_gather(t: Tensor, with_grad: bool = True) -> list[Tensor]:
    """All-gather ``t`` over the default process group; the entry at this rank is ``t`` itself.

    With ``with_grad=False`` the other ranks' copies are detached (the fix of docs/method.md §5 alone: only the local
    slice keeps its gradient). With ``with_grad`` (the default) the gather is differentiable (``torch.distributed.nn``):
    its backward sums each copy's gradient back onto its owner, which makes the loss exact.
    Without an initialised process group this returns ``[t]``.
    """
    import torch.distributed as dist  # local import: the library must not touch distributed at import

    if not (dist.is_available() and dist.is_initialized()):
        return [t]
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        parts = list(all_gather(t.contiguous()))
    else:
        parts = [torch.empty_like(t) for _ in range(world_size)]
        dist.all_gather(parts, t.detach().contiguous())
    # The local copy is replaced by the tensor itself so its gradient does not depend on the gather.
    parts[rank] = t
    return parts


def clamp_logit_scale_(param: Tensor, max_scale: float = 100.0) -> Tensor:
    """Clamp the learned log-scale in place to [0, ln(max_scale)]; call after each optimiser step."""
    if max_scale < 1.0:
        raise ValueError(f"max_scale must be >= 1 (so that ln(max_scale) >= 0), got {max_scale}")
    with torch.no_grad():
        param.clamp_(0.0, math.log(max_scale))
    return param


def _masked_mean_ce(logits: Tensor, labels: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Cross-entropy averaged over the non-ignored rows; 0 (with a gradient path) when all are ignored.

    Equals ``F.cross_entropy(..., reduction="mean")`` whenever one row is valid, but returns
    sum/max(count, 1) instead of 0/0 = NaN for an all-ignored batch, so a batch without any rendered
    image contributes nothing rather than poisoning the step.
    """
    per_row = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")  # (B,)
    count = (labels != ignore_index).sum()
    return per_row.sum() / count.clamp(min=1).to(per_row.dtype), count


class Uni3DLoss(nn.Module):
    """Symmetric point-text plus point-image InfoNCE over the global batch (docs/method.md §5).

    ``gather`` must return ``world_size`` tensors in rank order; whatever it returns at ``rank`` is
    replaced by the local tensor, so the local slice always keeps its gradient. It is required when
    ``world_size > 1`` and unused otherwise.
    """

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        gather: GatherFn | None = None,
        cfg: LossConfig | None = None,
    ) -> None:
        super().__init__()
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if world_size > 1 and gather is None:
            raise ValueError(f"gather must be given when world_size > 1 (world_size={world_size})")
        self.rank = rank
        self.world_size = world_size
        self.gather = gather
        self.cfg = cfg or LossConfig()

    def _gather(self, t: Tensor) -> Tensor:
        """(B, E) local -> (world_size·B, E) global, with the local tensor at block ``rank``."""
        if self.world_size == 1:
            return t
        parts = list(self.gather(t))  # type: ignore[misc]  # checked in __init__
        if len(parts) != self.world_size:
            raise ValueError(f"gather returned {len(parts)} tensors, expected world_size={self.world_size}")
        for i, p in enumerate(parts):
            if p.shape != t.shape:
                raise ValueError(f"gather returned shape {tuple(p.shape)} at rank {i}, expected {tuple(t.shape)}")
        parts[self.rank] = t
        return torch.cat(parts, dim=0)

    def forward(
        self,
        point_emb: Tensor,
        text_emb: Tensor,
        image_emb: Tensor,
        has_image: Tensor,
        logit_scale: Tensor,
    ) -> dict[str, Tensor]:
        """Loss and metrics for the local batch.

        Args:
            point_emb: (B, E) point-encoder output (not yet normalised).
            text_emb: (B, E) teacher text embeddings.
            image_emb: (B, E) teacher image embeddings; rows of shapes without an image are never read (they
                are zeroed, then masked out of every softmax: no positive, no negative), so any values do.
            has_image: (B,) bool, False where the shape has no rendered image.
            logit_scale: scalar learned log-temperature; the logits are multiplied by its exp.

        Returns "loss", "loss_text", "loss_image", "acc_text", "acc_image" (top-1 point->text and
        point->image accuracy in percent of the local rows, against the global candidate set; the image
        accuracy over rows with an image only) and the integer counts "num_correct_text",
        "num_correct_image", "num_image_rows" for an exact all-reduce across ranks.
        """
        _check_inputs(point_emb, text_emb, image_emb, has_image, logit_scale)
        batch = point_emb.shape[0]
        has_image = has_image.to(point_emb.device)
        # Normalise in fp32: a softmax over the global batch is lossy in half precision.
        p = F.normalize(point_emb.float(), dim=-1)  # (B, E)
        t = F.normalize(text_emb.float(), dim=-1)  # (B, E)
        i = F.normalize(image_emb.float(), dim=-1).masked_fill(~has_image[:, None], 0.0)  # (B, E), no NaN kept
        p_all, t_all, i_all = self._gather(p), self._gather(t), self._gather(i)  # (W·B, E)
        image_cols = self._gather(has_image.float()[:, None]).detach().reshape(-1) > 0.5  # (W·B,)
        scale = logit_scale.float().reshape(()).exp()

        labels = self.rank * batch + torch.arange(batch, device=p.device)  # (B,)
        ignore = self.cfg.ignore_index
        image_labels = torch.where(has_image, labels, torch.full_like(labels, ignore))

        logits_pt = scale * p @ t_all.T  # (B, W·B)
        logits_tp = scale * t @ p_all.T  # (B, W·B)
        # no image, no column: a finite floor rather than -inf, so an all-masked row stays NaN-free
        logits_pi = (scale * p @ i_all.T).masked_fill(~image_cols[None, :], torch.finfo(torch.float32).min)
        logits_ip = scale * i @ p_all.T  # (B, W·B); the rows without an image are ignored

        loss_text = 0.5 * (F.cross_entropy(logits_pt, labels) + F.cross_entropy(logits_tp, labels))
        ce_pi, num_image_rows = _masked_mean_ce(logits_pi, image_labels, ignore)
        ce_ip, _ = _masked_mean_ce(logits_ip, image_labels, ignore)
        loss_image = 0.5 * (ce_pi + ce_ip)

        with torch.no_grad():
            correct_text = (logits_pt.argmax(dim=-1) == labels).sum()
            correct_image = (logits_pi.argmax(dim=-1) == image_labels).sum()  # ignored rows never match
            acc_text = 100.0 * correct_text.float() / batch
            acc_image = 100.0 * correct_image.float() / num_image_rows.clamp(min=1).float()
        return {
            "loss": loss_text + loss_image,
            "loss_text": loss_text,
            "loss_image": loss_image,
            "acc_text": acc_text,
            "acc_image": acc_image,
            "num_correct_text": correct_text,
            "num_correct_image": correct_image,
            "num_image_rows": num_image_rows,
        }


def _check_inputs(
    point_emb: Tensor, text_emb: Tensor, image_emb: Tensor, has_image: Tensor, logit_scale: Tensor
) -> None:
    """Raise ValueError naming the first argument whose shape or dtype is wrong."""
    if point_emb.ndim != 2 or point_emb.shape[0] == 0:
        raise ValueError(f"point_emb must have shape (B, E) with B > 0, got {tuple(point_emb.shape)}")
    for name, emb in (("text_emb", text_emb), ("image_emb", image_emb)):
        if emb.shape != point_emb.shape:
            raise ValueError(
                f"{name} must have the shape of point_emb {tuple(point_emb.shape)}, got {tuple(emb.shape)}"
            )
    if has_image.shape != point_emb.shape[:1] or has_image.dtype != torch.bool:
        raise ValueError(
            f"has_image must be a bool tensor of shape ({point_emb.shape[0]},), "
            f"got {has_image.dtype} {tuple(has_image.shape)}"
        )
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar tensor, got shape {tuple(logit_scale.shape)}")
