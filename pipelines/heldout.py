"""The labelled held-out split of a build and the zero-shot evaluation run on it during pretraining.

The driver reads up to ``max_shapes`` held-out rows that have a category (``pipelines.splits``: the same
uids are never trained on) and embeds the class names with the build's text teacher through the 64
official templates (spec §8). Each training worker then embeds its slice of the rows and the top-k
*counts* are summed over ranks, so the accuracy is exact whatever the number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.schema import decode_points_batch
from pipelines.splits import keep_holdout
from uni3d.zeroshot import build_zero_shot_classifier, topk_correct, zero_shot_logits

COLUMNS = ["uid", "category", "num_points", "xyz", "rgb"]
KS = (1, 3, 5)


@dataclass
class HeldOut:
    table: pa.Table  # COLUMNS + "label" (int index into class_names)
    class_names: list[str]
    classifier: np.ndarray  # (C, E) unit rows

    def __len__(self) -> int:
        return self.table.num_rows


def read_heldout(ds: Any, fraction: float, seed: int, max_shapes: int, num_cpus: float = 1.0) -> pa.Table:
    """Held-out rows with a category from a Ray Dataset of build shards, in the build's order."""
    import ray

    kwargs = {"fraction": fraction, "seed": seed}
    held = (
        ds.select_columns(COLUMNS)
        .map_batches(keep_holdout, batch_format="pyarrow", fn_kwargs=kwargs, num_cpus=num_cpus)
        .filter(lambda row: row["category"] is not None, num_cpus=num_cpus)
        .limit(max_shapes)
    )
    tables = [t for t in ray.get(held.to_arrow_refs()) if t.num_rows]
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in ("uid", "category")})
    return pa.concat_tables(tables, promote_options="permissive")


def make_heldout(table: pa.Table, encode_text: Any) -> HeldOut | None:
    """Label the rows and embed their class names; None when there are fewer than two classes."""
    if table.num_rows == 0:
        return None
    categories = table.column("category").to_pylist()
    class_names = sorted(set(categories))
    if len(class_names) < 2:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    table = table.append_column("label", pa.array([index[c] for c in categories], pa.int64()))
    classifier = build_zero_shot_classifier(encode_text, class_names).numpy()
    return HeldOut(table=table, class_names=class_names, classifier=classifier)


@torch.no_grad()
def zero_shot_counts(
    embed: Any, held: HeldOut, rank: int, world: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """This rank's ``[top1, top3, top5, num_samples]`` counts; every rank runs the same number of forwards.

    ``embed`` maps ``(B, N, 6)`` points to ``(B, E)`` embeddings. Rows ``rank::world`` are this rank's;
    a rank with fewer rows repeats its last batch with zero weight, so collectives inside the forward
    (ZeRO-3 gathers weights there) stay in step.
    """
    rows = np.arange(rank, len(held), world)
    num_batches = math.ceil(math.ceil(len(held) / world) / batch_size)  # the same on every rank
    classes = torch.from_numpy(held.classifier).to(device)
    counts = torch.zeros(len(KS) + 1, dtype=torch.float64, device=device)
    for b in range(num_batches):
        take = rows[b * batch_size : (b + 1) * batch_size]
        real = len(take) > 0
        if not real:  # keep in step with the other ranks
            take = rows[-1:] if len(rows) else np.arange(1)
        part = held.table.take(pa.array(take))
        points = torch.from_numpy(decode_points_batch(part)).to(device)
        emb = embed(points)
        if not real:
            continue
        labels = torch.from_numpy(part.column("label").to_numpy()).to(device)
        hits = topk_correct(zero_shot_logits(emb.float(), classes), labels, KS)
        counts += torch.tensor([hits[k] for k in KS] + [len(take)], dtype=torch.float64, device=device)
    return counts
