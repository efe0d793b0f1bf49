"""The labelled held-out split of a build and the zero-shot evaluation run on it during pretraining.

Two measurements, each over its own class names embedded by the build's text teacher through the 64
official templates (Uni3D, arXiv 2310.06773; ``uni3d.zeroshot``):

- ``SEEN``, "held-out shapes of trained categories": shapes held out by their uid's hash
  (``pipelines.build.splits``), classified over the names of the categories the run trains on. Those names
  are among the training texts, so this measures recognising new shapes of known classes.
- ``UNSEEN``, "unseen categories": every shape of ``holdout_categories``, classified over all of the
  build's class names, seen and unseen: the encoder never trained on a shape, nor a text, of its class.

Each is a seeded random sample of up to ``max_shapes`` of its labelled rows: the driver reads the
build's ``uid``/``category`` columns, ranks the held-out uids by a seeded hash (``splits.sample_order``)
and reads the points of the first ``max_shapes`` only, so the sample is the same on every run, resume
and shard layout. Each training worker then embeds its slice of the rows and the top-k *counts* are
summed over ranks, so the accuracy is exact whatever the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipelines.build.codec import decode_points_batch
from pipelines.build.splits import METRIC_PREFIX, SEEN, UNSEEN, category_mask, keep_holdout, keep_uids, sample_order
from uni3d.zeroshot import build_zero_shot_classifier, topk_correct, zero_shot_logits

COLUMNS = ["uid", "category", "num_points", "xyz", "rgb"]
KS = (1, 3, 5)


@dataclass
class ZeroShotSet:
    """One measurement: labelled rows and the class names they are classified over."""

    name: str  # SEEN or UNSEEN
    table: pa.Table  # COLUMNS + "label" (int index into class_names)
    class_names: list[str]
    classifier: np.ndarray  # (C, E) unit rows

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def prefix(self) -> str:
        return METRIC_PREFIX[self.name]

    @property
    def chance_top1(self) -> float:
        return 100.0 / len(self.class_names)

    def info(self) -> dict[str, Any]:
        return {
            "measures": self.name,
            "metrics": f"{self.prefix}_top1/3/5",
            "shapes": len(self),
            "classes": self.class_names,
            "chance_top1": self.chance_top1,
        }

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self)} shapes over {len(self.class_names)} class names "
            f"(chance top-1 {self.chance_top1:.1f}%)"
        )


@dataclass
class HeldOut:
    """What the periodic evaluation runs on: one or both measurements, in the order SEEN, UNSEEN."""

    sets: list[ZeroShotSet]

    def __len__(self) -> int:
        return sum(len(s) for s in self.sets)

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.sets)


@dataclass
class BuildKeys:
    """What the driver learns from a build's ``uid`` and ``category`` columns alone."""

    num_rows: int
    class_names: list[str]  # every category of the build, sorted
    held: pa.Table  # uid, category of every held-out row (by hash or by category), labelled or not


def _gather(ds: Any, empty: pa.Schema) -> pa.Table:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables, promote_options="permissive") if tables else empty.empty_table()


def read_keys(ds: Any, fraction: float, seed: int, categories: Collection[str] = ()) -> BuildKeys:
    """Count a Ray Dataset of build shards per category and gather its held-out ``uid``/``category`` rows, in one
    pass over those two columns (the driver holds them: tens of bytes a shape)."""
    keys = _gather(ds.select_columns(["uid", "category"]), pa.schema([("uid", pa.string()), ("category", pa.string())]))
    names = sorted(c for c in pc.unique(keys.column("category")).to_pylist() if c is not None)
    held = keep_holdout(keys, fraction=fraction, seed=seed, categories=list(categories))
    return BuildKeys(keys.num_rows, names, held)


def sample_parts(held: pa.Table, categories: Collection[str], seed: int, max_shapes: int) -> dict[str, list[str]]:
    """Per measurement, the uids of a seeded random sample of up to ``max_shapes`` labelled held-out rows.

    The sample is a function of the set of rows and the seed only, never of their order."""
    labelled = held.filter(pc.is_valid(held.column("category")))
    unseen = category_mask(labelled.column("category"), categories)
    out = {}
    for name, rows in ((SEEN, labelled.filter(pa.array(~unseen))), (UNSEEN, labelled.filter(pa.array(unseen)))):
        uids = rows.column("uid").to_pylist()
        out[name] = [uids[i] for i in sample_order(uids, seed)[:max_shapes]]
    return out


def read_heldout(
    ds: Any,
    fraction: float,
    seed: int,
    max_shapes: int,
    categories: Collection[str] = (),
    num_cpus: float = 1.0,
    keys: BuildKeys | None = None,
) -> pa.Table:
    """The sampled rows of both measurements (``COLUMNS``) from a Ray Dataset of build shards.

    Up to ``max_shapes`` per measurement, in the sample's seeded order; ``keys`` is ``read_keys``' answer
    when the caller has it already."""
    keys = keys or read_keys(ds, fraction, seed, categories)
    wanted = [uid for uids in sample_parts(keys.held, categories, seed, max_shapes).values() for uid in uids]
    if not wanted:
        return pa.table({name: pa.array([], pa.string()) for name in ("uid", "category")})
    rows = ds.select_columns(COLUMNS).map_batches(
        keep_uids, batch_format="pyarrow", fn_kwargs={"uids": wanted}, num_cpus=num_cpus
    )
    table = _gather(rows, pa.schema([("uid", pa.string()), ("category", pa.string())]))
    return table.take(pa.array(sample_order(table.column("uid"), seed)))


def make_heldout(
    table: pa.Table, class_names: list[str], encode_text: Any, categories: Collection[str] = ()
) -> HeldOut | None:
    """Label the sampled rows and embed the class names; None when neither measurement can be made.

    Rows of ``categories`` are the UNSEEN measurement, over all ``class_names``; the others are SEEN, over
    the names not in ``categories``. A measurement needs a row and two class names."""
    if table.num_rows == 0:
        return None
    classifier = build_zero_shot_classifier(encode_text, class_names).numpy()  # (C, E), one teacher call
    unseen = category_mask(table.column("category"), categories)
    sets = []
    for name, rows in ((SEEN, table.filter(pa.array(~unseen))), (UNSEEN, table.filter(pa.array(unseen)))):
        names = [c for c in class_names if c not in categories] if name == SEEN else list(class_names)
        if rows.num_rows == 0 or len(names) < 2:
            continue
        index = {c: i for i, c in enumerate(names)}
        labels = pa.array([index[c] for c in rows.column("category").to_pylist()], pa.int64())
        keep = [class_names.index(c) for c in names]
        sets.append(ZeroShotSet(name, rows.append_column("label", labels), names, classifier[keep]))
    return HeldOut(sets) if sets else None


@torch.no_grad()
def zero_shot_counts(
    embed: Any, held: ZeroShotSet, rank: int, world: int, batch_size: int, device: torch.device
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
