"""DeepSpeed in bf16 (pipelines.train.strategy): fp32 masters exported, fp32 BatchNorm statistics, fp32 logit scale.

DeepSpeed runs in a child process with a one-rank gloo group (on the CPU accelerator), so the test's
process keeps no torch.distributed state.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    import deepspeed
    import uni3d
    from pipelines.train.strategy import DeepSpeedEngine, vector_logit_scale_
    from uni3d.loss import Uni3DLoss
    from uni3d.optim import OptimConfig, build_optimizer, set_lr

    stage, out = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = vector_logit_scale_(uni3d.create_model("nano", embed_dim=16))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen  # the unused 2D patch embed
    opt_cfg = OptimConfig(lr=1e-3, warmup_steps=0, total_steps=10)
    optimizer = build_optimizer(model, opt_cfg, depth=model.cfg.depth)
    engine = DeepSpeedEngine(model, optimizer, batch_size=4, grad_clip=5.0, zero_stage=stage, precision="bf16")
    bn = model.point_encoder.encoder.first_conv[1]
    assert bn.running_mean.dtype == torch.float32 and bn.running_var.dtype == torch.float32, bn.running_mean.dtype
    assert model.point_encoder.encoder2trans.weight.dtype == torch.bfloat16
    master0 = deepspeed.utils.safe_get_full_fp32_param(model.logit_scale)
    gen = torch.Generator().manual_seed(1)
    loss_fn = Uni3DLoss()
    for step in range(3):
        set_lr(engine.optimizer, step, opt_cfg)
        pc = torch.cat([torch.rand(4, 2048, 3, generator=gen) * 2 - 1, torch.rand(4, 2048, 3, generator=gen)], -1)
        emb, scale = engine.forward(pc)
        assert scale.dtype == torch.float32
        master = deepspeed.utils.safe_get_full_fp32_param(model.logit_scale)
        assert torch.equal(scale.detach().reshape(1), master.float().reshape(1)), (scale, master)
        text, image = torch.randn(4, 16, generator=gen), torch.randn(4, 16, generator=gen)
        out_ = loss_fn(emb, text, image, torch.ones(4, dtype=torch.bool), scale)
        engine.step(out_["loss"])
    assert bn.running_mean.dtype == torch.float32 and int(bn.num_batches_tracked) == 3
    master1 = deepspeed.utils.safe_get_full_fp32_param(model.logit_scale)
    assert float(master1) != float(master0), "the logit scale never moved"
    masters = {
        n: deepspeed.utils.safe_get_full_fp32_param(p).float().cpu().clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    with engine.export() as full:
        assert all(p.dtype == torch.float32 for p in full.parameters())
        got = dict(full.named_parameters())
        for name, master in masters.items():
            assert torch.equal(got[name].detach().reshape(master.shape), master), name
        # the masters hold bits a bf16 weight cannot: an upcast module weight would equal its bf16 rounding
        w = got["point_encoder.encoder2trans.weight"].detach()
        assert not torch.equal(w, w.bfloat16().float())
        assert full.logit_scale.shape == ()
        assert all(torch.equal(got[n].detach(), v) for n, v in frozen.items())  # frozen: the fp32 values
        assert full.point_encoder.encoder.first_conv[1].running_mean.dtype == torch.float32
        pc = torch.rand(2, 2048, 6, generator=gen)
        full.eval()
        assert torch.isfinite(full.encode_pc(pc)).all()
    engine.save(__import__("pathlib").Path(out), 0, {"stage": stage})
    saved = uni3d.load_checkpoint(__import__("pathlib").Path(out) / "model")
    for name, master in masters.items():
        assert torch.equal(dict(saved.named_parameters())[name].detach().reshape(master.shape), master), name
    print("OK")
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_deepspeed_bf16_keeps_fp32_masters_statistics_and_logit_scale(stage: int, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions"),  # where DeepSpeed would JIT-build its C++ ops
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(stage), str(tmp_path / "ckpt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-3000:] + proc.stderr[-5000:]
    # and it compiled nothing: not the shared-memory all-reduce op its CPU backend builds for inference (~30 s)
    assert not (tmp_path / "torch_extensions").exists(), sorted((tmp_path / "torch_extensions").rglob("*"))
