"""Distributed strategies for pretraining: plain DDP and DeepSpeed ZeRO stage 1, 2 or 3.

One interface over both, so the training loop does not know which runs: ``forward`` gives the
embeddings and the logit scale, ``step`` does backward, clipping, the optimiser step and the logit
scale clamp (docs/method.md §5), ``skip`` drops a step whose loss was not finite, ``save``/``load`` write and read
the full training state (model, optimiser, DeepSpeed partitions), and ``export`` gives rank 0 a plain
``uni3d.Uni3D`` with the full weights for our checkpoint format.

DeepSpeed keeps an fp32 master copy of every parameter in the optimiser's partitions (ZeRO 1/2/3),
and after each step copies it back into the module. Clamping only the module's ``logit_scale`` (what
the official code does) is therefore undone on the next step: the clamp here writes the master
copy too. Torch distributed is already set up (by Ray Train) when these are built.

bf16 (DeepSpeed casts the module's parameters to bf16; DDP keeps fp32 weights under autocast): the
exported model and the checkpoints' ``model/`` are the fp32 master weights (not bf16 module weights
upcast), BatchNorm running statistics stay fp32 (kept so in DeepSpeed's config; the tokenizer's
BatchNorms normalise in fp32), and the loss multiplies by exp of the fp32 master logit scale: the bf16 copy of
ln(1/0.07) is 2.656 instead of 2.659, a 0.3% error in s, and the clamp's bound ln 100 is not a bf16 value.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

import uni3d
from uni3d.encoder import Uni3D
from uni3d.loss import clamp_logit_scale_

Precision = Literal["fp32", "bf16"]
MAX_LOGIT_SCALE = math.log(100.0)


def vector_logit_scale_(model: Uni3D) -> Uni3D:
    """Hold the logit scale as shape ``(1,)`` while training: DeepSpeed cannot broadcast a 0-d parameter.

    Call before building the optimiser; ``scalar_logit_scale`` gives the official 0-d shape back for saving.
    """
    model.logit_scale = nn.Parameter(model.logit_scale.detach().reshape(1).clone())
    return model


@contextlib.contextmanager
def scalar_logit_scale(model: Uni3D) -> Iterator[Uni3D]:
    """The model with its logit scale viewed as 0-d (the saved layout) for the duration of the block."""
    param = model.logit_scale
    data = param.data
    param.data = data.reshape(())
    try:
        yield model
    finally:
        param.data = data


class TrainModule(nn.Module):
    """The model as the engines see it: ``forward`` returns the embeddings and a copy of the logit scale.

    The copy is made inside ``forward`` so that ZeRO-3, which frees a parameter after the forward that
    gathered it, still hands the loss a live tensor (its gradient reaches the parameter).
    """

    def __init__(self, model: Uni3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, pc: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(pc), self.model.logit_scale * 1.0


class Engine(ABC):
    model: Uni3D  # the wrapped model; under ZeRO-3 its parameters are partitioned
    optimizer: Any  # whose param_groups carry lr_scale (uni3d.optim.set_lr works on it)

    @abstractmethod
    def forward(self, pc: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, N, 6)`` -> fp32 embeddings ``(B, E)`` and the fp32 log logit scale."""

    @abstractmethod
    def step(self, loss: Tensor) -> float:
        """Backward, clip, optimiser step and logit-scale clamp; returns the gradient norm before clipping."""

    @abstractmethod
    def skip(self) -> None:
        """Drop this step (its loss was not finite): no backward, no update, gradients cleared."""

    @abstractmethod
    def save(self, folder: Path, rank: int, meta: dict[str, Any]) -> bool:
        """Write this rank's part of the training state under ``folder`` (rank 0 also ``model/``, our format,
        with ``meta``); True if it wrote anything."""

    @abstractmethod
    def load(self, folder: Path) -> None:
        """Restore the training state written by ``save`` (all ranks' parts are in ``folder``)."""

    @abstractmethod
    def export(self, keep: bool = True) -> contextlib.AbstractContextManager[Uni3D]:
        """Context giving the full model with fp32 weights (every rank enters it: ZeRO-3 gathers the weights,
        bf16 gathers the fp32 masters); ranks with ``keep`` False need not get a copy they do not save."""

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)


class DDPEngine(Engine):
    """Torch DDP (through ``ray.train.torch.prepare_model``); bf16 runs under autocast with fp32 weights."""

    def __init__(
        self,
        model: Uni3D,
        optimizer: torch.optim.Optimizer,
        *,
        grad_clip: float,
        precision: Precision,
        device: torch.device,
        wrap: Callable[[nn.Module], nn.Module],
        resume: Path | None = None,
    ) -> None:
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        self.device = device
        self.precision = precision
        if resume is not None:  # before wrapping: DDP broadcasts rank 0's weights when it wraps
            self.load(resume)
        self.module = wrap(TrainModule(model))

    @classmethod
    def single_process(
        cls,
        model: Uni3D,
        opt_cfg: Any,
        grad_clip: float = 5.0,
        device: torch.device | None = None,
        precision: Precision = "fp32",
    ) -> DDPEngine:
        """An engine for one process without torch.distributed (benchmarks, tests, notebooks); the model is
        expected on ``device`` already; ``precision="bf16"`` runs the forward under autocast, as DDP runs do."""
        from uni3d.optim import build_optimizer

        vector_logit_scale_(model)
        optimizer = build_optimizer(model, opt_cfg, depth=model.cfg.depth)
        device = device or torch.device("cpu")
        return cls(model, optimizer, grad_clip=grad_clip, precision=precision, device=device, wrap=lambda m: m)

    def forward(self, pc: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            emb, scale = self.module(pc)
        return emb.float(), scale.float()

    def step(self, loss: Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        clamp_logit_scale_(self.model.logit_scale)
        return float(norm)

    def skip(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, folder: Path, rank: int, meta: dict[str, Any]) -> bool:
        if rank != 0:  # every rank holds the same weights and optimiser state
            return False
        with scalar_logit_scale(self.model) as model:
            uni3d.save_checkpoint(model, folder / "model", meta=meta)
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        return True

    def load(self, folder: Path) -> None:
        state = uni3d.load_checkpoint(folder / "model").state_dict()
        state["logit_scale"] = state["logit_scale"].reshape(self.model.logit_scale.shape)
        self.model.load_state_dict(state)
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))

    def export(self, keep: bool = True) -> contextlib.AbstractContextManager[Uni3D]:
        return scalar_logit_scale(self.model)  # fp32 weights: autocast computes in bf16, stores nothing in it


def skip_shm_comm_build() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce op, which training never calls.

    On a CPU node, DeepSpeed's communication backend JIT-compiles that C++ op when it starts (about 30 s of both
    cores here, and it needs a C++ compiler and ninja), once per environment. Only DeepSpeed's inference all-reduce
    uses it. DeepSpeed builds an op only if its table of compatible ops (``deepspeed.ops.__compatible_ops__``, probed
    once per process) says so, so marking this one incompatible skips the build.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().get_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def deepspeed_config(
    batch_size: int, grad_clip: float, zero_stage: int, precision: Precision, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The DeepSpeed config for one micro-batch per step and our own optimiser and lr schedule."""
    if zero_stage not in (1, 2, 3):
        raise ValueError(f"zero_stage must be 1, 2 or 3, got {zero_stage}")
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        # buffers follow the parameters (the EVA blocks' zero k bias is concatenated with the bf16 q/v biases),
        # except the BatchNorm running statistics, which stay fp32 (uni3d.tokenizer.Fp32BatchNorm1d)
        **(
            {"data_types": {"buffer_dtype": "bf16", "keep_in_fp32_modules": ["running_mean", "running_var"]}}
            if precision == "bf16"
            else {}
        ),
        "zero_allow_untested_optimizer": True,  # our AdamW with layer-decay groups
        "steps_per_print": 2**62,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    return {**config, **(extra or {})}


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO; the engine runs forward/backward/step, clipping included."""

    TAG = "state"

    def __init__(
        self,
        model: Uni3D,
        optimizer: torch.optim.Optimizer,
        *,
        batch_size: int,
        grad_clip: float,
        zero_stage: int,
        precision: Precision,
        resume: Path | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        import deepspeed

        self._ds = deepspeed
        self.zero_stage = zero_stage
        self.precision = precision
        # frozen parameters have no fp32 master: keep their fp32 values from before DeepSpeed's bf16 cast
        self._frozen = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if not p.requires_grad}
        module = TrainModule(model)
        config = deepspeed_config(batch_size, grad_clip, zero_stage, precision, extra_config)
        skip_shm_comm_build()
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
        if zero_stage == 3:  # TrainModule.forward reads the child's logit_scale: ZeRO-3 must gather it there
            deepspeed.zero.register_external_parameter(module, model.logit_scale)
        self.model = model
        self._scale_master: Tensor | None = None  # fp32 master of the logit scale, shape (1,)
        if resume is not None:
            self.load(resume)
        else:
            self._read_scale_master()

    def forward(self, pc: Tensor) -> tuple[Tensor, Tensor]:
        emb, scale = self.engine(pc)
        scale = scale.float()
        if self._scale_master is not None:  # the fp32 value; the gradient still flows to the bf16 parameter
            scale = scale + (self._scale_master.to(scale.device) - scale).detach()
        return emb.float(), scale

    def step(self, loss: Tensor) -> float:
        self.engine.backward(loss)
        self.engine.step()
        self._clamp_logit_scale()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def _read_scale_master(self) -> Tensor | None:
        master = self._ds.utils.safe_get_full_fp32_param(self.model.logit_scale)  # collective: every rank calls it
        self._scale_master = None if master is None else master.detach().float().reshape(1).clone()
        return master

    def _clamp_logit_scale(self) -> None:
        param = self.model.logit_scale
        master = self._read_scale_master()
        if master is None:
            return
        value = float(master.reshape(-1)[0])
        if 0.0 <= value <= MAX_LOGIT_SCALE:
            return
        clamped = master.clamp(0.0, MAX_LOGIT_SCALE)
        self._ds.utils.safe_set_full_fp32_param(param, clamped)
        self._scale_master = clamped.detach().float().reshape(1).clone()
        gather = self._ds.zero.GatheredParameters([param], modifier_rank=0) if self.zero_stage == 3 else None
        with gather or contextlib.nullcontext():
            with torch.no_grad():
                param.clamp_(0.0, MAX_LOGIT_SCALE)

    def skip(self) -> None:
        self.engine.zero_grad()

    def save(self, folder: Path, rank: int, meta: dict[str, Any]) -> bool:
        self.engine.save_checkpoint(str(folder / "deepspeed"), tag=self.TAG)  # collective; each rank its shard
        with self.export(keep=rank == 0) as model:  # collective
            if rank == 0:
                uni3d.save_checkpoint(model, folder / "model", meta=meta)
        return True

    def load(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder / "deepspeed"), tag=self.TAG, load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {folder / 'deepspeed'} (tag {self.TAG!r})")
        self._read_scale_master()

    @contextlib.contextmanager
    def export(self, keep: bool = True):  # type: ignore[override]
        """The full model with fp32 weights. Under bf16 these are the optimiser's fp32 masters, gathered
        parameter by parameter (a collective: every rank enters) into a new model on the CPU that only the
        ranks with ``keep`` build; the others get the training model, which they must not save."""
        if self.precision == "bf16":
            state: dict[str, Tensor] = {}
            for name, param in self.model.named_parameters():
                if name in self._frozen:
                    state[name] = self._frozen[name].float()
                    continue
                master = self._ds.utils.safe_get_full_fp32_param(param)
                if master is None:
                    raise RuntimeError(f"DeepSpeed holds no fp32 master for {name}")
                if keep:
                    state[name] = master.detach().float().cpu().clone()
            if not keep:
                yield self.model
                return
            buffers = {name: buf.detach().cpu().clone() for name, buf in self.model.named_buffers()}
            state["logit_scale"] = state["logit_scale"].reshape(())
            with torch.device("meta"):  # no random init of a model about to be overwritten
                full = Uni3D(self.model.cfg)
            persistent = set(full.state_dict())
            full.load_state_dict({**state, **{k: v for k, v in buffers.items() if k in persistent}}, assign=True)
            for name, buf in buffers.items():  # non-persistent ones (rope tables, zero k biases)
                if name not in persistent:
                    owner, _, leaf = name.rpartition(".")
                    full.get_submodule(owner)._buffers[leaf] = buf
            yield full
            return
        params = list(self.model.parameters())
        gather = self._ds.zero.GatheredParameters(params, modifier_rank=None) if self.zero_stage == 3 else None
        with gather or contextlib.nullcontext(), scalar_logit_scale(self.model) as model:
            yield model
