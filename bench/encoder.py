"""Benchmark: encoder forward+backward throughput (samples/s) and, on CUDA, MFU.

Runs a training step (train mode: patch dropout and drop path on, as in pretraining) of the
encoder with a cosine loss against random targets, for each requested preset at its own
tokenization: ``tiny`` at the official one (N=10,000, 512 groups of 64) and ``micro``, the CPU
preset of the ``cpu`` recipe. FLOPs per step are counted with ``torch.utils.flop_counter`` (matmuls and convs,
forward + backward), so MFU = achieved FLOP/s / the device's peak.

Usage: ``python bench/encoder.py [--presets tiny micro] [--batch 8] [--device cpu|cuda] [--dtype fp32|bf16]``
"""

from __future__ import annotations

import argparse
import json

import torch
from common import machine, time_it
from torch.utils.flop_counter import FlopCounterMode

import uni3d

# Dense bf16 peak, for MFU (vendor datasheets, without sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def bench_preset(name: str, batch: int, device: torch.device, dtype: str, repeats: int) -> dict:
    model = uni3d.create_model(name).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(batch, cfg.num_points, 3, generator=g)
    pc = torch.cat(
        [
            xyz / xyz.norm(dim=-1, keepdim=True).amax(1, keepdim=True),
            torch.rand(batch, cfg.num_points, 3, generator=g),
        ],
        -1,
    ).to(device)
    target = torch.nn.functional.normalize(torch.randn(batch, cfg.embed_dim, generator=g), dim=-1).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> None:
        with autocast:
            emb = torch.nn.functional.normalize(model.encode_pc(pc).float(), dim=-1)
        loss = 1 - (emb * target).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    seconds = time_it(step, repeats=repeats, warmup=1, sync=device.type == "cuda")
    result = {
        "preset": name,
        "batch": batch,
        "points": cfg.num_points,
        "groups": cfg.num_group,
        "group_size": cfg.group_size,
        "dtype": dtype,
        "s_per_step": seconds,
        "samples_per_s": batch / seconds,
        "gflop_per_sample": flops / batch / 1e9,
    }
    peak = peak_flops(device)
    if peak:
        result["mfu"] = flops / seconds / peak
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "micro"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    results = [bench_preset(p, args.batch, device, args.dtype, args.repeats) for p in args.presets]
    print(f"# encoder forward+backward on {machine()} ({args.device}, {args.dtype})")
    print(
        "| preset | tokenization (N / G x K) | batch | samples / s | GFLOP / sample | MFU |\n|---|---|---|---|---|---|"
    )
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a (CPU)"
        print(
            f"| {r['preset']} | {r['points']} / {r['groups']} x {r['group_size']} | {r['batch']} | "
            f"{r['samples_per_s']:.2f} | {r['gflop_per_sample']:.1f} | {mfu} |"
        )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
