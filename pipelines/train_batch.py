"""Turn a batch of build rows into a training batch (Uni3D spec §5): points, one text, one view.

Per shape and step, the official recipe draws one text embedding uniformly from the shape's
candidate texts and one image embedding from its first 10 rendered views; shapes without views
keep a zero image embedding and ``has_image=False``, so the loss masks them (their images are not
negatives either: there are none). Decoding is vectorised over the batch; the random draws come
from a caller-owned generator so that a resumed run can reproduce them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.schema import decode_embeddings, decode_points_batch

OFFICIAL_MAX_VIEWS = 10  # spec §5: the image target is drawn from the first 10 of 12 views


@dataclass(frozen=True)
class TrainBatchConfig:
    embed_dim: int  # the model's embedding size; must equal the build's teacher dimension
    max_views: int = OFFICIAL_MAX_VIEWS


def check_teacher_dim(batch: pa.Table | pa.RecordBatch | dict[str, Any], embed_dim: int) -> None:
    """A build made with one teacher cannot train a model sized for another: say which is which."""
    dims = np.unique(np.asarray(_column(batch, "embed_dim")))
    if dims.size != 1 or int(dims[0]) != embed_dim:
        teachers = sorted({str(t) for t in np.asarray(_column(batch, "teacher"))})
        raise ValueError(
            f"the build's embeddings come from teacher {teachers} with embed_dim {dims.tolist()}, but the model's "
            f"projection has embed_dim {embed_dim}; build with the model's teacher or create the model with "
            f"embed_dim={int(dims[0])}"
        )


def make_train_batch(
    batch: pa.Table | pa.RecordBatch | dict[str, Any], cfg: TrainBatchConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Build rows -> ``points (B, N, 6)``, ``text_emb (B, E)``, ``image_emb (B, E)``, ``has_image (B,)``."""
    check_teacher_dim(batch, cfg.embed_dim)
    points = decode_points_batch(batch)  # (B, N, 6) float32
    texts, num_texts = decode_embeddings(_column(batch, "text_embeddings"), cfg.embed_dim)  # (B, T, E), (B,)
    views, num_views = decode_embeddings(_column(batch, "view_embeddings"), cfg.embed_dim, max_count=cfg.max_views)
    if (num_texts < 1).any():
        raise ValueError(f"rows {np.flatnonzero(num_texts < 1).tolist()} have no text embedding")
    rows = np.arange(len(points))
    text_idx = np.minimum((rng.random(len(rows)) * num_texts).astype(np.int64), num_texts - 1)
    has_image = num_views > 0
    view_idx = np.minimum(
        (rng.random(len(rows)) * np.maximum(num_views, 1)).astype(np.int64), np.maximum(num_views - 1, 0)
    )
    image = views[rows, view_idx] if views.shape[1] else np.zeros((len(rows), cfg.embed_dim), np.float32)
    image[~has_image] = 0.0
    return {
        "points": points,
        "text_emb": np.ascontiguousarray(texts[rows, text_idx], dtype=np.float32),
        "image_emb": np.ascontiguousarray(image, dtype=np.float32),
        "has_image": has_image,
    }


def _column(batch: pa.Table | pa.RecordBatch | dict[str, Any], name: str) -> Any:
    if isinstance(batch, pa.Table | pa.RecordBatch):
        return batch.column(name)
    if name not in batch:
        raise ValueError(f"batch has no column {name!r}; columns: {sorted(batch)}")
    return batch[name]
