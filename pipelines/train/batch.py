"""Turn a batch of build rows into a training batch (Uni3D paper §3.2): points, one text, one view.

Per shape and step one text embedding is drawn as the recipe does: first one of the text *groups* the
shape has (name/metadata, caption, retrieval; ``pipelines.sources.shapes.TEXT_GROUPS``), uniformly, then one text
uniformly within it, so a shape with five retrieval texts and one name gets its name a third of the time.
Version 1 builds have no groups: each text counts as its own (what they trained with before).

One image embedding is drawn uniformly among the shape's rendered views. For OpenShape's released renders
(source ``openshape``) only the first 10 of the 12 are candidates, as the official code has it; our own
renders are 12 views on one ring, and keeping the first 10 would always drop the same two azimuths, so every
view is a candidate (docs/dataset.md). Shapes without views get a zero image embedding and
``has_image=False``: the loss ignores their rows in the image terms and leaves their column out of the other
shapes' point->image softmax. Decoding is vectorised over the batch; the random draws come from a
caller-owned generator so that a resumed run can reproduce them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.build.codec import decode_embeddings, decode_points_batch, text_groups_column

OPENSHAPE_MAX_VIEWS = 10  # the official recipe draws OpenShape's image target from its first 10 of 12 views


@dataclass(frozen=True)
class TrainBatchConfig:
    embed_dim: int  # the model's embedding size; must equal the build's teacher dimension
    openshape_max_views: int = OPENSHAPE_MAX_VIEWS  # views drawn from for source "openshape"; others: all


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
    views, num_views = decode_embeddings(_column(batch, "view_embeddings"), cfg.embed_dim)
    if (num_texts < 1).any():
        raise ValueError(f"rows {np.flatnonzero(num_texts < 1).tolist()} have no text embedding")
    rows = np.arange(len(points))
    draws = rng.random((3, len(rows)))
    text_idx = draw_text(*text_groups_column(batch), draws[0], draws[1])
    openshape = np.asarray(_column(batch, "source")) == "openshape"
    num_views = np.where(openshape, np.minimum(num_views, cfg.openshape_max_views), num_views)
    has_image = num_views > 0
    view_idx = np.minimum((draws[2] * np.maximum(num_views, 1)).astype(np.int64), np.maximum(num_views - 1, 0))
    image = views[rows, view_idx] if views.shape[1] else np.zeros((len(rows), cfg.embed_dim), np.float32)
    image[~has_image] = 0.0
    return {
        "points": points,
        "text_emb": np.ascontiguousarray(texts[rows, text_idx], dtype=np.float32),
        "image_emb": np.ascontiguousarray(image, dtype=np.float32),
        "has_image": has_image,
    }


def draw_text(groups: np.ndarray, offsets: np.ndarray, u_group: np.ndarray, u_text: np.ndarray) -> np.ndarray:
    """Per row, the index of its drawn text: a group uniformly among those the row has, then a text of it.

    ``groups`` is the flat group id of every text, ``offsets`` the rows' starts in it (``len = B + 1``);
    ``u_group`` and ``u_text`` are uniform draws in [0, 1), one per row. Vectorised: texts are sorted by
    (row, group, position), so the m-th text of group g in row r sits at a known place in that order."""
    num_rows = len(offsets) - 1
    counts_per_row = np.diff(offsets)
    row_of = np.repeat(np.arange(num_rows), counts_per_row)
    num_groups = int(groups.max()) + 1 if len(groups) else 1
    counts = np.zeros((num_rows, num_groups), np.int64)
    np.add.at(counts, (row_of, groups), 1)
    present = counts > 0
    pick = np.minimum((u_group * present.sum(1)).astype(np.int64), present.sum(1) - 1)  # j-th present group
    group = np.argmax(np.cumsum(present, axis=1) > pick[:, None], axis=1)
    in_group = counts[np.arange(num_rows), group]
    m = np.minimum((u_text * in_group).astype(np.int64), in_group - 1)
    order = np.lexsort((np.arange(len(groups)), groups, row_of))  # by row, then group, then position
    starts = np.concatenate([[0], np.cumsum(counts.ravel())])[:-1].reshape(num_rows, num_groups)
    flat = order[starts[np.arange(num_rows), group] + m]
    return flat - offsets[:-1]


def _column(batch: pa.Table | pa.RecordBatch | dict[str, Any], name: str) -> Any:
    if isinstance(batch, pa.Table | pa.RecordBatch):
        return batch.column(name)
    if name not in batch:
        raise ValueError(f"batch has no column {name!r}; columns: {sorted(batch)}")
    return batch[name]
