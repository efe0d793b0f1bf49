"""Retrieval over embedded shapes: cosine top-k and recall@k (text->3D, image->3D, 3D->3D).

All embeddings are L2-normalised here, so scores are cosine similarities in [-1, 1]. ``recall_at_k`` is the
share of queries (in percent) with at least one relevant gallery item, one with the query's label, among
their top k; with ``exclude`` a query's own gallery row never counts (3D->3D over one gallery).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _unit(x: Any, name: str) -> Tensor:
    t = x.float() if isinstance(x, Tensor) else torch.from_numpy(np.array(x, dtype=np.float32))
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (n, E) array, got shape {tuple(t.shape)}")
    return F.normalize(t, dim=-1)


def search(queries: Any, gallery: Any, k: int, exclude: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Top-``k`` gallery rows per query: ``(scores (Q, k), indices (Q, k))``, best first.

    ``exclude[i]`` is a gallery row that query ``i`` must not return (itself), or -1 for none.
    """
    q, g = _unit(queries, "queries"), _unit(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dimensions but the gallery {g.shape[1]}: embed both in one space")
    sims = q @ g.T  # (Q, N)
    if exclude is not None:
        rows = torch.arange(len(q))
        cols = torch.as_tensor(list(exclude), dtype=torch.long)
        keep = cols >= 0
        sims[rows[keep], cols[keep]] = -float("inf")
    k = min(k, g.shape[0] - (1 if exclude is not None else 0))
    if k < 1:
        raise ValueError("the gallery has no rows to return")
    scores, idx = sims.topk(k, dim=1)
    return scores, idx


def recall_at_k(
    query_labels: Sequence[Any], gallery_labels: Sequence[Any], indices: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Percent of queries with a gallery item of their label among the top ``k`` (``indices`` from ``search``)."""
    gl = np.asarray(gallery_labels, dtype=object)
    ql = np.asarray(query_labels, dtype=object)
    if len(ql) != indices.shape[0]:
        raise ValueError(f"{len(ql)} query labels for {indices.shape[0]} queries")
    hits = gl[indices.numpy()] == ql[:, None]  # (Q, K)
    return {k: 100.0 * float(hits[:, :k].any(axis=1).mean()) for k in ks if k <= indices.shape[1]}
