"""The sweep report (pipelines/sweep/report.py) and the model costs it shows (uni3d/cost.py)."""

from __future__ import annotations

import csv
import json
import resource
from pathlib import Path

import pytest
import torch
from conftest import random_cloud
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import uni3d
from pipelines.sweep.report import PLOTS, TrialRecord, read_metrics_file, short_init, summarise_metrics, write_report
from uni3d.presets import OFFICIAL_PARAM_COUNTS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ---- model_cost


@pytest.mark.parametrize("name", ["nano", "micro"])
def test_meta_device_flops_equal_a_real_forward(name: str) -> None:
    model = uni3d.create_model(name, embed_dim=64).eval()
    cfg = model.cfg
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encode_pc(random_cloud(1, cfg.num_points))
    cost = uni3d.model_cost(name, 64)
    assert cost.flops_per_sample == counter.get_total_flops()
    # attention is in the count: QK^T and AV, 2 * 2 * L^2 * D per block, L = 1 + G tokens
    bmm = counter.get_flop_counts()["Global"][torch.ops.aten.bmm]
    assert bmm == 4 * (1 + cfg.num_group) ** 2 * cfg.width * cfg.depth
    assert cost.num_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert cost.num_params < cost.num_params_total == sum(p.numel() for p in model.parameters())


def test_tiny_total_parameters_are_the_official_count_and_costs_are_cached() -> None:
    cost = uni3d.model_cost("tiny", 1024)
    assert cost.num_params_total == OFFICIAL_PARAM_COUNTS["tiny"]
    assert uni3d.model_cost("tiny", 1024) is cost
    assert uni3d.model_cost("nano", 64).flops_per_sample < uni3d.model_cost("micro", 64).flops_per_sample


def test_giant_cost_is_counted_without_allocating_it() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cost = uni3d.model_cost("giant", 1024)
    grew_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    assert cost.num_params_total == OFFICIAL_PARAM_COUNTS["giant"]
    assert grew_gib < 1.0  # its fp32 weights alone would be 3.8 GiB
    assert cost.flops_per_sample > 1e12  # ~1.1 TFLOP: 40 blocks of width 1408 over 513 tokens


# ---- the report


def _record(i: int, model: str, init: str, num_params: int, curve: list[tuple[int, float]], **kw) -> TrialRecord:
    top1 = [a for _, a in curve]
    fields = dict(
        trial_id=f"a1b2c_{i:05d}",
        status="TERMINATED",
        params={"model": model, "init": init, "lr": 0.001},
        model=model,
        init=init,
        num_params=num_params,
        flops_per_sample=num_params * 1000.0,
        steps=curve[-1][0] if curve else 0,
        total_steps=300,
        best_top1=max(top1) if top1 else None,
        final_top1=top1[-1] if top1 else None,
        best_top5=min(100.0, max(top1) + 20) if top1 else None,
        final_top5=min(100.0, top1[-1] + 20) if top1 else None,
        wall_s=125.4 + i,
        curve=curve,
        run_dir=f"trials/{i}",
    )
    fields.update(kw)
    return TrialRecord(**fields)


def _records() -> list[TrialRecord]:
    sizes = {"nano": 706_281, "micro": 2_834_000, "tiny": 6_221_825}
    inits = ["scratch", "timm:/models/eva/eva02_tiny.safetensors"]
    out = []
    for m, (model, n) in enumerate(sizes.items()):
        for j, init in enumerate(inits):
            out.append(_record(len(out), model, init, n, [(100, 20.0 + 10 * m + j), (200, 40.0 + 10 * m + 5 * j)]))
    out.append(_record(len(out), "micro", "run:/runs/a/final", 2_834_000, [(100, 12.5)], status="ERROR", error="OOM"))
    out.append(_record(len(out), "tiny", "scratch", 6_221_825, [], status="PENDING"))
    return out


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_SIGNATURE) and len(data) > 1024


def test_report_files_hold_every_record(tmp_path: Path) -> None:
    records = _records()
    index = write_report(tmp_path / "report", records, "micro sweep", {"data": "/data/shapes", "chance_top1": 7.1})
    out = index.parent
    assert index == out / "index.html"

    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == [r.trial_id for r in records]
    assert {"param.init", "param.lr", "param.model", "wall_s", "run_dir"} <= set(rows[0])
    for row, rec in zip(rows, records, strict=True):
        assert row["init"] == rec.init == row["param.init"]  # in full, not shortened
        assert int(row["num_params"]) == rec.num_params and row["status"] == rec.status
        for key in ("best_top1", "final_top1", "best_top5", "final_top5"):
            assert (float(row[key]) if row[key] else None) == getattr(rec, key)
    assert rows[6]["error"] == "OOM" and rows[7]["best_top1"] == ""

    md = (out / "trials.md").read_text().splitlines()
    table = [line for line in md if line.startswith("| a1b2c_")]
    assert len(table) == len(records)
    assert "2.83M" in table[2] and "2:07" in table[2] and "timm:eva02_tiny.safetensors" in table[1]
    assert "/models/eva" not in "\n".join(md) and "| – |" in table[-1]

    for name in PLOTS:
        assert _is_png(out / name), name
    page = index.read_text()
    for name in PLOTS:
        assert f'<img src="{name}"' in page
    for rec in records:
        assert rec.trial_id in page
    assert "/data/shapes" in page and "1 ERROR" in page and "6 TERMINATED" in page
    assert not list(out.glob("*.tmp"))  # every temporary file was renamed into place


def test_report_without_evaluations_still_has_every_picture(tmp_path: Path) -> None:
    records = [_record(0, "nano", "scratch", 706_281, [], status="PENDING")]
    write_report(tmp_path, records, "empty", None)
    for name in PLOTS:
        assert _is_png(tmp_path / name), name
    write_report(tmp_path, [], "nothing", None)  # no trials at all
    assert all(_is_png(tmp_path / name) for name in PLOTS)


def test_short_init_keeps_the_file_name() -> None:
    assert short_init("scratch") == "scratch"
    assert short_init("timm:/models/eva02_base.safetensors") == "timm:eva02_base.safetensors"
    assert short_init("timm:eva02_base_patch14_448@/m/b.safetensors") == "timm:b.safetensors"
    assert short_init("run:/mnt/runs/micro-scratch/final/") == "run:micro-scratch/final"


# ---- metrics.jsonl


def test_summarise_metrics_from_lines() -> None:
    lines = [
        {"step": 50, "loss": 3.0},
        {"step": 100, "loss": 2.0, "zeroshot_top1": 30.0, "zeroshot_top3": 50.0, "zeroshot_top5": 60.0},
        {"step": 200, "loss": 1.5, "zeroshot_top1": 55.0, "zeroshot_top5": 80.0},
        {"step": 200, "loss": 1.4, "zeroshot_top1": 50.0, "zeroshot_top5": 85.0},  # resumed: repeats step 200
        {"step": 250, "loss": 1.2},
    ]
    s = summarise_metrics(lines)
    assert s["curve"] == [(100, 30.0), (200, 50.0)]
    assert (s["best_top1"], s["final_top1"], s["best_top5"], s["final_top5"]) == (50.0, 50.0, 85.0, 85.0)
    assert s["steps"] == 250
    assert summarise_metrics([{"step": 10, "loss": 1.0}])["best_top1"] is None


def test_read_metrics_file_leaves_out_a_half_written_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    full = [{"step": 100, "zeroshot_top1": 30.0, "zeroshot_top5": 60.0}, {"step": 200, "loss": 1.0}]
    path.write_text("".join(json.dumps(m) + "\n" for m in full) + '{"step": 300, "zeroshot_to')
    assert read_metrics_file(path) == full
    assert summarise_metrics(read_metrics_file(path))["steps"] == 200
    path.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n')  # a broken line mid-file is an error
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics_file(path)
    assert read_metrics_file(tmp_path / "missing.jsonl", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        read_metrics_file(tmp_path / "missing.jsonl")
