"""Training batches from build rows: one text per shape, one of its first 10 views, images masked (spec §5)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.schema import make_row, rows_to_table
from pipelines.train_batch import TrainBatchConfig, make_train_batch

E = 16


def unit(k: int) -> np.ndarray:
    v = np.zeros(E, np.float32)
    v[k] = 1.0
    return v


def table(num_views: list[int], num_texts: list[int]):
    rng = np.random.default_rng(0)
    rows = []
    for i, (k, t) in enumerate(zip(num_views, num_texts, strict=True)):
        xyz = rng.normal(size=(64, 3))
        xyz /= np.linalg.norm(xyz, axis=1).max()
        points = np.concatenate([xyz, rng.random((64, 3))], axis=1).astype(np.float32)
        rows.append(
            make_row(
                uid=f"s{i}",
                source="procedural",
                category="chair",
                texts=[f"text {j}" for j in range(t)],
                points=points,
                has_color=True,
                teacher="minilm:all-MiniLM-L6-v2",
                embed_dim=E,
                text_embeddings=np.stack([unit(j) for j in range(t)]),  # text j of any shape is e_j
                view_embeddings=np.stack([unit(j) for j in range(k)]) if k else None,
            )
        )  # view j is e_j
    return rows_to_table(rows)


def test_draws_one_text_and_one_of_the_first_ten_views() -> None:
    batch = table(num_views=[12, 0, 3], num_texts=[5, 1, 2])
    cfg = TrainBatchConfig(embed_dim=E)
    texts, views = [set(), set(), set()], [set(), set(), set()]
    for seed in range(200):
        out = make_train_batch(batch, cfg, np.random.default_rng(seed))
        assert out["points"].shape == (3, 64, 6) and out["points"].dtype == np.float32
        assert out["has_image"].tolist() == [True, False, True]
        for b in range(3):
            texts[b].add(int(out["text_emb"][b].argmax()))
            if out["has_image"][b]:
                views[b].add(int(out["image_emb"][b].argmax()))
        assert not out["image_emb"][1].any()  # no views: a zero image embedding, masked by has_image
    assert texts == [set(range(5)), {0}, {0, 1}]  # every candidate text gets drawn
    assert views[0] == set(range(10))  # views 10 and 11 never: the first 10 only
    assert views[2] == {0, 1, 2}


def test_draws_are_reproducible_from_the_generator() -> None:
    batch = table(num_views=[12, 12], num_texts=[5, 5])
    cfg = TrainBatchConfig(embed_dim=E)
    a = make_train_batch(batch, cfg, np.random.default_rng(7))
    b = make_train_batch(batch, cfg, np.random.default_rng(7))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_model_sized_for_another_teacher_is_refused() -> None:
    batch = table(num_views=[1], num_texts=[1])
    with pytest.raises(
        ValueError, match=r"teacher \['minilm:all-MiniLM-L6-v2'\] with embed_dim \[16\].*embed_dim 1024"
    ):
        make_train_batch(batch, TrainBatchConfig(embed_dim=1024), np.random.default_rng(0))
