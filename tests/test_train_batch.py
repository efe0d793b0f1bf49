"""Training batches from build rows: one text per shape (a group, then a text in it), one view, images masked."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.build.schema import VERSION_KEY, make_row, rows_to_table
from pipelines.train.batch import TrainBatchConfig, draw_text, make_train_batch

E = 16


def unit(k: int) -> np.ndarray:
    v = np.zeros(E, np.float32)
    v[k] = 1.0
    return v


def table(num_views: list[int], num_texts: list[int], groups: list[list[str]] | None = None, source="procedural"):
    rng = np.random.default_rng(0)
    rows = []
    for i, (k, t) in enumerate(zip(num_views, num_texts, strict=True)):
        xyz = rng.normal(size=(64, 3))
        xyz /= np.linalg.norm(xyz, axis=1).max()
        points = np.concatenate([xyz, rng.random((64, 3))], axis=1).astype(np.float32)
        rows.append(
            make_row(
                uid=f"s{i}",
                source=source,
                category="chair",
                texts=[f"text {j}" for j in range(t)],
                points=points,
                has_color=True,
                teacher="minilm:all-MiniLM-L6-v2",
                embed_dim=E,
                text_embeddings=np.stack([unit(j) for j in range(t)]),  # text j of any shape is e_j
                view_embeddings=np.stack([unit(j) for j in range(k)]) if k else None,
                text_groups=groups[i] if groups else None,
            )
        )  # view j is e_j
    return rows_to_table(rows)


def test_draws_one_text_and_any_view_of_our_renders_the_first_ten_of_openshapes() -> None:
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
    assert views[0] == set(range(12))  # our 12 views on one ring: every azimuth is a target
    assert views[2] == {0, 1, 2}
    openshape = table(num_views=[12], num_texts=[1], source="openshape")
    drawn = {
        int(make_train_batch(openshape, cfg, np.random.default_rng(s))["image_emb"][0].argmax()) for s in range(200)
    }
    assert drawn == set(range(10))  # OpenShape's renders: the official first 10 of 12


def test_a_group_is_drawn_uniformly_then_a_text_within_it() -> None:
    # name, caption (BLIP and MSFT: one group), five retrieval texts: each group a third of the time.
    groups = [["name", "caption", "caption", *["retrieval"] * 5], ["retrieval", "name"]]
    batch = table(num_views=[0, 0], num_texts=[8, 2], groups=groups)
    cfg = TrainBatchConfig(embed_dim=E)
    counts = np.zeros((2, 8))
    n = 6000
    rng = np.random.default_rng(0)
    for _ in range(n // 100):  # 100 draws per call: one row repeated
        big = pa.concat_tables([batch] * 50)
        out = make_train_batch(big, cfg, rng)["text_emb"].argmax(1).reshape(50, 2)
        for b in range(2):
            np.add.at(counts[b], out[:, b], 1)
    share = counts / counts.sum(1, keepdims=True)
    np.testing.assert_allclose(share[0], [1 / 3, 1 / 6, 1 / 6, *[1 / 15] * 5], atol=0.03)
    np.testing.assert_allclose(share[1][:2], [1 / 2, 1 / 2], atol=0.03)


def test_version_1_rows_count_each_text_as_its_own_group() -> None:
    v2 = table(num_views=[0], num_texts=[4], groups=[["name", "retrieval", "retrieval", "retrieval"]])
    v1 = v2.drop_columns(["text_groups"]).replace_schema_metadata({VERSION_KEY: b"1"})
    cfg = TrainBatchConfig(embed_dim=E)
    drawn = [int(make_train_batch(v1, cfg, np.random.default_rng(s))["text_emb"][0].argmax()) for s in range(800)]
    np.testing.assert_allclose(np.bincount(drawn, minlength=4) / 800, [0.25] * 4, atol=0.05)


def test_draw_text_picks_the_mth_text_of_the_chosen_group() -> None:
    groups = np.array([2, 0, 2, 1, 0, 0])  # row 0: texts 0..2; row 1: texts 3..5
    offsets = np.array([0, 3, 6])
    # row 0 has groups {0, 2}: u=0.9 -> group 2, u=0.99 -> its 2nd text (index 2); row 1 {0, 1}: group 0, 1st
    np.testing.assert_array_equal(draw_text(groups, offsets, np.array([0.9, 0.1]), np.array([0.99, 0.0])), [2, 1])
    np.testing.assert_array_equal(draw_text(groups, offsets, np.array([0.1, 0.9]), np.array([0.0, 0.5])), [1, 0])


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
