"""Benchmark for a GPU machine: the rates that size a cluster (cluster/README.md), in one command.

``make bench-gpu`` (this script with its defaults) runs in a few minutes on one GPU and prints a Markdown table
for BENCHMARKS.md (also written to ``--out`` with the raw numbers as JSON):

1. **Encoder training step**: Uni3D-B (``base``) at the official tokenization (10,000 points -> 512 groups of
   64), bf16 autocast, forward + backward + AdamW: samples/s and MFU, with the FLOPs counted by
   ``torch.utils.flop_counter`` (matmuls and convolutions; FPS and kNN are not counted).
2. **Grouping**: FPS + kNN (``uni3d.tokenizer.group_points``) of the same batch, eager and, on CUDA, replayed
   from a CUDA graph, as a share of the step (goal: <= 5%).
3. **Teacher towers**: EVA02-E-14-plus (the official teacher) with random weights in bf16: views/s through the
   image tower (224 x 224) and texts/s through the text tower (77 tokens), and their MFU: the rates that size the
   teacher GPU-hours of a build.
4. **Ray Train**: one GPU worker (Ray Train + Ray Data, DDP, bf16) against the bare single-process loop on the
   same build, the same model and the same step function (``bench/pretrain.py``'s two paths).

MFU is against the dense bf16 peak of the card (``bench/encoder.py``'s table); on a CPU it is not given.
``--tiny`` shrinks every section (a small preset and tokenization, ``tiny-ViT-32`` towers, a 48-shape build unless
``--build`` names one) so that the script itself runs on a CPU: the test suite runs it that way, on its 192-shape
build.

Usage: ``python bench/gpu.py [--tiny] [--out bench-gpu.md] [--batch 32] [--skip-ray]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from common import machine, time_it
from encoder import bench_preset, peak_flops
from pretrain import bare_loop, ray_run
from pretrain import build as make_build
from torch.utils.flop_counter import FlopCounterMode

from pipelines.build.manifest import read_manifest
from uni3d.open_clip_weights import TINY_ARCHS
from uni3d.teacher_spec import OFFICIAL_MODEL
from uni3d.tokenizer import group_points


@dataclasses.dataclass
class Settings:
    """What each section runs: the full sizes (a GPU) or ``--tiny`` (any CPU, the test suite)."""

    preset: str = "base"
    batch: int = 32
    towers: str = OFFICIAL_MODEL
    tower_batch: int = 64
    shapes: int = 512
    points: int = 10_000
    train_model: str = "base"
    train_batch: int = 32
    train_steps: int = 40
    repeats: int = 5

    @classmethod
    def tiny(cls) -> Settings:
        return cls("nano", 2, "tiny-ViT-32", 4, 48, 512, "nano", 8, 4, 2)


def encoder_section(s: Settings, device: torch.device) -> dict[str, Any]:
    dtype = "bf16" if device.type == "cuda" else "fp32"
    return bench_preset(s.preset, s.batch, device, dtype, s.repeats)


def grouping_section(s: Settings, device: torch.device, step_s: float) -> dict[str, Any]:
    import uni3d

    cfg = uni3d.get_preset(s.preset)
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(s.batch, cfg.num_points, 3, generator=g)
    pc = torch.cat([xyz / xyz.norm(dim=-1, keepdim=True).amax(1, keepdim=True), torch.rand_like(xyz)], -1).to(device)
    sync = device.type == "cuda"
    eager = time_it(lambda: group_points(pc, cfg.num_group, cfg.group_size), repeats=s.repeats, sync=sync)
    out: dict[str, Any] = {"eager_s": eager, "eager_share": eager / step_s, "graph_s": None, "graph_share": None}
    if device.type == "cuda":
        try:
            out["graph_s"] = _cuda_graph_time(pc, cfg.num_group, cfg.group_size, s.repeats)
            out["graph_share"] = out["graph_s"] / step_s
        except Exception as e:  # a host sync inside the loop cannot be captured: say so, keep the eager number
            out["graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return out


def _cuda_graph_time(pc: torch.Tensor, num_group: int, group_size: int, repeats: int) -> float:
    """Median time of replaying ``group_points`` captured in a CUDA graph (one launch instead of ~2 per FPS step)."""
    static = pc.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(2):
            group_points(static, num_group, group_size)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = group_points(static, num_group, group_size)
    graph.replay()
    torch.cuda.synchronize()
    expected = group_points(pc, num_group, group_size)
    if not all(torch.equal(a, b) for a, b in zip(captured, expected, strict=True)):
        raise RuntimeError("the graph's groups differ from the eager ones")
    return time_it(graph.replay, repeats=repeats, sync=True)


def towers_section(s: Settings, device: torch.device) -> dict[str, Any]:
    """Views/s and texts/s of the teacher's two towers with random weights (built on the device: no 20 GB CPU init)."""
    import open_clip

    base, overrides = TINY_ARCHS.get(s.towers, (s.towers, {}))
    precision = "bf16" if device.type == "cuda" else "fp32"
    with torch.device(device):
        model = open_clip.create_model(base, pretrained=None, precision=precision, device=device, **overrides)
    model.eval().requires_grad_(False)
    size = open_clip.get_model_config(base)["vision_cfg"]["image_size"]
    size = int(overrides.get("vision_cfg", {}).get("image_size", size))
    dtype = next(model.visual.parameters()).dtype
    views = torch.randn(s.tower_batch, 3, size, size, device=device, dtype=dtype)
    texts = torch.randint(1, 49_000, (s.tower_batch, model.context_length), device=device)
    peak = peak_flops(device)
    out: dict[str, Any] = {"arch": s.towers, "precision": precision, "image_size": size, "batch": s.tower_batch}
    out["params_b"] = sum(p.numel() for p in model.parameters()) / 1e9
    for name, fn in (("views", lambda: model.encode_image(views)), ("texts", lambda: model.encode_text(texts))):
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                fn()
            seconds = time_it(fn, repeats=s.repeats, sync=device.type == "cuda")
        out[f"{name}_per_s"] = s.tower_batch / seconds
        out[f"{name}_gflop_each"] = counter.get_total_flops() / s.tower_batch / 1e9
        out[f"{name}_mfu"] = counter.get_total_flops() / seconds / peak if peak else None
    return out


def ray_section(s: Settings, device: torch.device, work: Path, build: Path | None) -> dict[str, Any]:
    """Samples/s of one Ray Train worker on this device against the bare loop, on the same build."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", log_to_driver=False, configure_logging=False)
    try:
        data = build or make_build(work / "build", s.shapes, s.points)
        gpu = device.type == "cuda"
        precision = "bf16" if gpu else "fp32"
        per_epoch = max(1, read_manifest(str(data / "manifest.json")).num_shapes // s.train_batch)
        epochs = max(1, -(-(s.train_steps + 5) // per_epoch))  # + 5: the first log window, not timed
        bare = bare_loop(data, s.train_model, s.train_batch, s.train_steps, threads=torch.get_num_threads(),
                         device=device, precision=precision)  # fmt: skip
        sets = {"use_gpu": gpu, "precision": precision, "strategy": "ddp", "worker_cpus": 1.0 if gpu else 0.5}
        sets["data_cpus"] = 1.0 if gpu else 0.25
        rate, wait, steps = ray_run(data, work / "runs", "gpu-bench", s.train_model, 1, s.train_batch, epochs, **sets)
    finally:
        if started:
            ray.shutdown()
    return {"bare_samples_per_s": bare, "ray_samples_per_s": rate, "ray_vs_bare": rate / bare, "data_wait": wait,
            "steps": steps, "model": s.train_model, "batch": s.train_batch, "precision": precision}  # fmt: skip


def table(results: dict[str, Any], device: torch.device) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    enc, grp = results["encoder"], results["grouping"]
    lines = [f"# GPU benchmark: {results['machine']} ({device.type})", "", "| measure | value |", "|---|---|"]
    tok = f"{enc['points']} / {enc['groups']} x {enc['group_size']}"
    lines += [
        f"| encoder step: {enc['preset']}, {tok}, {enc['dtype']}, batch {enc['batch']} | "
        f"{enc['samples_per_s']:.1f} samples/s, {enc['gflop_per_sample']:.1f} GFLOP/sample, "
        f"MFU {pct(enc.get('mfu'))} |",
        f"| grouping (FPS + kNN), eager | {1e3 * grp['eager_s']:.2f} ms = {pct(grp['eager_share'])} of a step |",
    ]
    if grp.get("graph_s") is not None:
        lines.append(f"| grouping, CUDA graph | {1e3 * grp['graph_s']:.2f} ms = {pct(grp['graph_share'])} of a step |")
    elif "graph_error" in grp:
        lines.append(f"| grouping, CUDA graph | not captured: {grp['graph_error']} |")
    if "towers" in results:
        tw = results["towers"]
        head = f"{tw['arch']} ({tw['params_b']:.3g}B params, random weights), {tw['precision']}, batch {tw['batch']}"
        lines += [
            f"| image tower: {head}, {tw['image_size']}² | {tw['views_per_s']:.1f} views/s, "
            f"{tw['views_gflop_each']:.4g} GFLOP/view, MFU {pct(tw['views_mfu'])} |",
            f"| text tower: {head}, 77 tokens | {tw['texts_per_s']:.1f} texts/s, "
            f"{tw['texts_gflop_each']:.4g} GFLOP/text, MFU {pct(tw['texts_mfu'])} |",
        ]
    if "ray" in results:
        r = results["ray"]
        what = f"{r['model']}, batch {r['batch']}, {r['precision']}"
        lines += [
            f"| bare loop, one process ({what}) | {r['bare_samples_per_s']:.1f} samples/s |",
            f"| Ray Train + Ray Data, 1 worker, DDP ({what}) | {r['ray_samples_per_s']:.1f} samples/s = "
            f"{r['ray_vs_bare']:.2f}x the bare loop, data wait {pct(r['data_wait'])} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU-sized settings for every section (the test suite)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, help="encoder batch (default 32; --tiny: 2)")
    ap.add_argument("--skip-towers", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--build", type=Path, help="an existing build for the Ray section (default: one made in --work)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/uni3d-bench-gpu"))
    ap.add_argument("--out", type=Path, default=Path("bench-gpu.md"), help="the table; the JSON goes beside it")
    args = ap.parse_args(argv)
    s = Settings.tiny() if args.tiny else Settings()
    if args.batch:
        s.batch = args.batch
    device = torch.device(args.device)
    start = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "settings": dataclasses.asdict(s)}
    results["encoder"] = encoder_section(s, device)
    print(f"[bench-gpu] encoder: {results['encoder']['samples_per_s']:.1f} samples/s", flush=True)
    results["grouping"] = grouping_section(s, device, results["encoder"]["s_per_step"])
    if not args.skip_towers:
        results["towers"] = towers_section(s, device)
        print(f"[bench-gpu] towers: {results['towers']['views_per_s']:.1f} views/s", flush=True)
    if not args.skip_ray:
        results["ray"] = ray_section(s, device, args.work, args.build)
    results["seconds"] = time.perf_counter() - start
    text = table(results, device)
    print(text)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
