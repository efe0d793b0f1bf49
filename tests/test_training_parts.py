"""Pretraining parts that need no Ray: held-out split, recipes, resume checks, non-finite steps, zero-shot counts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

import uni3d
from pipelines.build.schema import make_row, rows_to_table
from pipelines.build.splits import (
    SEEN,
    UNSEEN,
    drop_holdout,
    holdout_mask,
    keep_holdout,
    sample_order,
    train_filter_kwargs,
)
from pipelines.evaluate.heldout import HeldOut, make_heldout, sample_parts, zero_shot_counts
from pipelines.train.batch import TrainBatchConfig
from pipelines.train.config import TrainConfig, make_config
from pipelines.train.driver import check_resume, text_groups_warning
from pipelines.train.loop import NonFiniteGuard, NonFiniteLoss, train_step
from pipelines.train.recipes import recipe_names
from pipelines.train.strategy import DDPEngine, scalar_logit_scale, vector_logit_scale_
from uni3d.loss import Uni3DLoss
from uni3d.optim import OptimConfig

E = 16


def rows(n: int, categories: list[str], embed_dim: int = E) -> pa.Table:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        xyz = rng.normal(size=(128, 3))
        xyz /= np.linalg.norm(xyz, axis=1).max()
        points = np.concatenate([xyz, rng.random((128, 3))], axis=1).astype(np.float32)
        text = np.zeros((1, embed_dim), np.float32)
        text[0, i % embed_dim] = 1.0
        out.append(
            make_row(
                uid=f"shape-{i}",
                source="procedural",
                category=categories[i % len(categories)],
                texts=["a shape"],
                points=points,
                has_color=True,
                teacher="minilm:all-MiniLM-L6-v2",
                embed_dim=embed_dim,
                text_embeddings=text,
                view_embeddings=None,
            )
        )
    return rows_to_table(out)


def test_holdout_is_a_fixed_seeded_fraction_of_uids() -> None:
    uids = [f"uid-{i}" for i in range(20_000)]
    mask = holdout_mask(uids, 0.1)
    assert abs(mask.mean() - 0.1) < 0.01
    assert (holdout_mask(list(reversed(uids)), 0.1) == mask[::-1]).all()  # per uid, not per position
    assert (holdout_mask(uids, 0.1, seed=0) != holdout_mask(uids, 0.1, seed=1)).any()
    assert not holdout_mask(uids, 0.0).any()
    table = pa.table({"uid": uids[:500]})
    kept, held = drop_holdout(table, 0.1), keep_holdout(table, 0.1)
    assert kept.num_rows + held.num_rows == 500
    assert not set(kept.column("uid").to_pylist()) & set(held.column("uid").to_pylist())
    with pytest.raises(ValueError, match="fraction must be in"):
        holdout_mask(uids, 1.0)


def test_held_out_categories_are_never_trained_on_whatever_their_uid() -> None:
    table = pa.table({"uid": [f"u{i}" for i in range(400)], "category": (["chair", "lamp", None, "car"] * 100)})
    cfg = TrainConfig(data="x", holdout_fraction=0.1, holdout_categories=["lamp", "car"])
    train = drop_holdout(table, **train_filter_kwargs(cfg))
    held = keep_holdout(table, **train_filter_kwargs(cfg))
    assert train.num_rows + held.num_rows == 400
    assert set(train.column("category").to_pylist()) <= {"chair", None}  # no row of a held-out category
    assert held.filter(pa.compute.equal(held.column("category"), "lamp")).num_rows == 100  # all of them
    by_hash = keep_holdout(table, 0.1, cfg.seed)
    assert set(by_hash.column("uid").to_pylist()) <= set(held.column("uid").to_pylist())
    nothing = TrainConfig(data="x", holdout_fraction=0.0)
    assert drop_holdout(table, **train_filter_kwargs(nothing)) is table
    with pytest.raises(ValueError, match="needs a 'category' column"):
        drop_holdout(table.select(["uid"]), **train_filter_kwargs(cfg))


def test_the_held_out_sample_is_seeded_random_and_independent_of_row_order() -> None:
    uids = [f"shape-{i:05d}" for i in range(3000)]
    first = [uids[i] for i in sample_order(uids, 7)[:100]]
    shuffled = list(np.random.default_rng(0).permutation(uids))
    assert [shuffled[i] for i in sample_order(shuffled, 7)[:100]] == first  # same sample whatever the order
    assert first != uids[:100] and first != sorted(first)  # not the first rows, nor sorted by uid
    assert [uids[i] for i in sample_order(uids, 8)[:100]] != first  # the seed changes it
    # spread over the whole set, not the build's first rows (which is what a limit() would take)
    assert np.mean([int(u.split("-")[1]) for u in first]) == pytest.approx(1500, abs=300)
    held = pa.table({"uid": uids, "category": ["chair", "lamp", "car", None] * 750})
    parts = sample_parts(held, {"car"}, seed=7, max_shapes=50)
    assert len(parts[SEEN]) == len(parts[UNSEEN]) == 50
    cats = dict(zip(uids, held.column("category").to_pylist(), strict=True))
    assert {cats[u] for u in parts[UNSEEN]} == {"car"} and {cats[u] for u in parts[SEEN]} == {"chair", "lamp"}


def test_recipes_build_valid_configs_and_mirror_the_official_recipe() -> None:
    for name in recipe_names():
        cfg = make_config("build", name)
        assert cfg.recipe == name
    g = make_config("build", "uni3d-g")
    assert (g.model, g.batch_size, g.lr, g.weight_decay, g.layer_decay) == ("giant", 48, 1e-3, 0.1, 0.95)
    assert (g.warmup_steps, g.epochs, g.grad_clip, g.seed, g.strategy, g.zero_stage) == (
        10_000,
        200,
        5.0,
        4096,
        "deepspeed",
        1,
    )
    assert [make_config("b", f"uni3d-{s}").model for s in ("ti", "s", "b", "l")] == ["tiny", "small", "base", "large"]
    assert make_config("build", "cpu", {"epochs": 9}).epochs == 9
    with pytest.raises(ValueError, match="unknown recipe 'uni3d-xl'"):
        make_config("build", "uni3d-xl")
    with pytest.raises(ValueError, match="invalid strategy='fsdp'"):
        make_config("build", "cpu", {"strategy": "fsdp"})


def test_a_run_resumes_only_with_the_settings_it_was_started_with(tmp_path: Path) -> None:
    cfg = TrainConfig(data="build", batch_size=16)
    check_resume(tmp_path, cfg)  # nothing saved yet
    (tmp_path / "config.json").write_text(json.dumps({"train": dataclasses.asdict(cfg)}))
    check_resume(tmp_path, dataclasses.replace(cfg, epochs=5, log_every=3))  # schedule-free fields may change
    with pytest.raises(ValueError, match=r"batch_size: 16 -> 32.*Use another --name"):
        check_resume(tmp_path, dataclasses.replace(cfg, batch_size=32))


def test_non_finite_guard_counts_and_stops_after_too_many_in_a_row() -> None:
    guard = NonFiniteGuard(limit=3)
    for finite in (True, False, False, True, False, False):
        guard.update(finite, step=1)
    assert (guard.total, guard.in_a_row) == (4, 2)
    with pytest.raises(NonFiniteLoss, match="not finite for 3 steps in a row"):
        guard.update(False, step=7)


def _engine(model: uni3d.Uni3D) -> tuple[DDPEngine, OptimConfig]:
    opt = OptimConfig(lr=1e-3, warmup_steps=0, total_steps=10)
    return DDPEngine.single_process(model, opt), opt


def test_a_non_finite_loss_skips_the_step_and_a_finite_one_takes_it() -> None:
    model = uni3d.create_model("nano", embed_dim=E)
    engine, opt = _engine(model)
    cfg = TrainConfig(data="build", batch_size=4, augment=True)
    bias = model.point_encoder.trans2embed.bias
    good = bias.detach().clone()
    with torch.no_grad():
        bias[0] = float("nan")  # a NaN in the output: the loss is NaN
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = rows(4, ["chair"])
    out, finite = train_step(engine, Uni3DLoss(), batch, TrainBatchConfig(E), opt, cfg, 0, 3, torch.device("cpu"))
    assert not finite and not torch.isfinite(out["loss"])
    changed = [
        k for k, v in model.state_dict().items() if not torch.allclose(before[k], v, rtol=0, atol=0, equal_nan=True)
    ]
    assert changed == []
    assert all(p.grad is None for p in model.parameters())
    assert not engine.optimizer.state  # AdamW never stepped
    with torch.no_grad():
        bias.copy_(good)
    out, finite = train_step(engine, Uni3DLoss(), batch, TrainBatchConfig(E), opt, cfg, 0, 3, torch.device("cpu"))
    assert finite and torch.isfinite(out["loss"])
    assert not torch.equal(before["point_encoder.trans2embed.weight"], model.point_encoder.trans2embed.weight)


def test_train_step_draws_are_a_function_of_the_step() -> None:
    losses = []
    for _ in range(2):
        model = uni3d.create_model("nano", embed_dim=E)
        torch.manual_seed(0)
        model.load_state_dict(uni3d.create_model("nano", embed_dim=E).state_dict())
        engine, opt = _engine(model)
        cfg = TrainConfig(data="build", batch_size=4)
        torch.manual_seed(123 + len(losses))  # the global RNG state must not matter
        batch, cpu = rows(4, ["chair"]), torch.device("cpu")
        out, _ = train_step(engine, Uni3DLoss(), batch, TrainBatchConfig(E), opt, cfg, 0, 7, cpu)
        losses.append(float(out["loss"]))
    assert losses[0] == losses[1]


def test_the_saved_model_has_the_official_scalar_logit_scale(tmp_path: Path) -> None:
    model = vector_logit_scale_(uni3d.create_model("nano", embed_dim=E))
    assert model.logit_scale.shape == (1,)
    with scalar_logit_scale(model) as m:
        uni3d.save_checkpoint(m, tmp_path / "m")
    assert model.logit_scale.shape == (1,)
    assert uni3d.load_checkpoint(tmp_path / "m").logit_scale.shape == ()


def test_zero_shot_counts_summed_over_ranks_equal_one_rank() -> None:
    classes = ["bed", "car", "chair", "lamp"]
    table = rows(11, classes)
    held = make_heldout(table.select(["uid", "category", "num_points", "xyz", "rgb"]), classes, _encode_names)
    assert isinstance(held, HeldOut) and [s.name for s in held.sets] == [SEEN]
    held = held.sets[0]
    assert held.class_names == classes and held.classifier.shape == (4, E)

    def embed(points: torch.Tensor) -> torch.Tensor:  # a fixed, deterministic "encoder"
        return points[:, :E, 0].float() @ torch.eye(E) + points[:, 0, :1]

    one = zero_shot_counts(embed, held, 0, 1, 4, torch.device("cpu"))
    calls: list[int] = []
    many = sum(
        zero_shot_counts(lambda p: calls.append(len(p)) or embed(p), held, r, 3, 2, torch.device("cpu"))
        for r in range(3)
    )
    assert torch.equal(one, many) and float(one[-1]) == 11
    assert len(calls) == 3 * 2  # ceil(ceil(11 / 3) / 2) = 2 forwards on every rank, padded ones included
    assert make_heldout(table.select(["uid", "category"]).slice(0, 1), ["bed"], _encode_names) is None  # one class


def test_unseen_categories_are_classified_over_all_names_and_seen_ones_over_the_trained_names() -> None:
    classes = ["bed", "car", "chair", "lamp"]
    table = rows(12, classes).select(["uid", "category", "num_points", "xyz", "rgb"])
    held = make_heldout(table, classes, _encode_names, categories=["lamp"])
    seen, unseen = held.sets
    assert (seen.name, unseen.name) == (SEEN, UNSEEN) and (seen.prefix, unseen.prefix) == ("zeroshot", "unseen")
    assert seen.class_names == ["bed", "car", "chair"] and unseen.class_names == classes
    assert set(unseen.table.column("category").to_pylist()) == {"lamp"} and len(unseen) == 3 and len(seen) == 9
    full = make_heldout(table, classes, _encode_names).sets[0].classifier
    assert np.allclose(seen.classifier, full[:3]) and np.allclose(unseen.classifier, full)  # rows of one embedding
    assert unseen.table.column("label").to_pylist() == [3, 3, 3]
    assert held.describe().startswith(f"{SEEN}: 9 shapes over 3 class names")


def _encode_names(texts: list[str]) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(tuple(texts))) % 2**32)
    return rng.normal(size=(len(texts), E)).astype(np.float32)


def test_a_version_1_build_gets_one_warning_line_naming_it() -> None:
    line = text_groups_warning("/data/old-build", 1)
    assert line is not None and "\n" not in line
    assert "/data/old-build" in line and "schema version 1" in line and "docs/dataset.md" in line
    assert text_groups_warning("/data/new-build", 2) is None
