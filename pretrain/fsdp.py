"""``train.parallel='fsdp'``: FSDP2 (``torch.distributed.fsdp.fully_shard``) for the pretraining loop.

Sharding: each ViT block is one FSDP group, the rest of the network (patch embedding, tokens, final
norm, head) a group at the root. The student's root is ``StudentPass`` and the teacher's
``TeacherPass``: FSDP gathers parameters in forward hooks, and the train step calls these modules, not
``iBOTModel.forward``. Both networks are sharded alike on one mesh, so every teacher parameter's local
shard matches the student's and the EMA runs on local shards; ``ibot.optim.clip_gradients`` reduces
each parameter's gradient norm over its shards.

Mixed precision stays ``torch.autocast`` over fp32 parameters, exactly as under DDP. FSDP's
``MixedPrecisionPolicy(param_dtype=bf16)`` would be a different recipe: it gathers bf16 copies, so
LayerNorm affine parameters, the position embedding and ``[CLS]``/mask tokens, the weight-normalised
last layer, and with them the residual stream would all run in bf16 (autocast keeps these in fp32),
and runs could not move between DDP and FSDP with the same numerics. The price is fp32 all-gathers.

Checkpoints keep the DDP layout: ``state_dict()`` of the models and the optimizer with every shard
gathered into a full CPU tensor on rank 0, and restored by sharding the full tensors again. (Not
``torch.distributed.checkpoint.state_dict``'s full-state-dict mode: its loader fails on the tied
modules of a shared iBOT head, and it initialises the state of every parameter before loading, so
parameters without saved state — the last layer while frozen — would resume with state DDP lacks and
the resume would not be bit-identical.)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from ibot.model import iBOTModel
from ibot.train_step import StudentPass, TeacherPass

PARALLEL_MODES = ("ddp", "fsdp")


def shard_student_teacher(student_pass: StudentPass, teacher_pass: TeacherPass, device: torch.device,
                          world: int) -> None:
    """Shard both networks in place over ``world`` processes (their parameters become DTensors)."""
    mesh = init_device_mesh(device.type, (world,))
    _shard(student_pass, student_pass.student, mesh)
    # The teacher never runs backward: free its gathered parameters right after forward.
    _shard(teacher_pass, teacher_pass.teacher, mesh, reshard_after_forward=True)
    teacher_pass.register_forward_hook(_reshard)


def _shard(root: nn.Module, model: iBOTModel, mesh: DeviceMesh, **kw: Any) -> None:
    for block in model.backbone.blocks:
        fully_shard(block, mesh=mesh, **kw)
    fully_shard(root, mesh=mesh, **kw)


def _reshard(module: FSDPModule, args: Any, output: Any) -> None:
    # FSDP may keep a root module's parameters gathered after forward, expecting backward (whether
    # reshard_after_forward overrides that depends on the torch release). The EMA writes the
    # teacher's shards, so a gathered copy kept until the next forward would be stale.
    module.reshard()


# ------------------------------------------------------------------ checkpoints
# Every rank calls these in the same order: gathering and scattering are collectives, one tensor at a
# time (peak memory: one full tensor per rank besides the CPU copy on rank 0).


@torch.no_grad()
def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` unsharded, as CPU tensors on rank 0, ``{}`` elsewhere."""
    return _gather(model.state_dict())


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` (keyed by parameter index) unsharded on rank 0, ``{}`` elsewhere."""
    sd = optimizer.state_dict()
    state = {i: _gather(s) for i, s in sorted(sd["state"].items())}
    return {"state": state, "param_groups": sd["param_groups"]} if dist.get_rank() == 0 else {}


@torch.no_grad()
def load_full_model_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a full state dict (every rank passes the same) into a sharded model; strict."""
    own = model.state_dict()
    model.load_state_dict({k: _shard_like(v, own.get(k)) for k, v in state.items()})


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full ``optimizer.state_dict()`` (every rank passes the same) into the optimizer of a
    sharded model. Parameters without saved state (the frozen last layer) start fresh, as they would
    under DDP."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sharded = {i: {k: _shard_like(v, params[i] if i < len(params) else None) for k, v in s.items()}
               for i, s in state["state"].items()}
    optimizer.load_state_dict({**state, "state": sharded})


def _gather(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    main = dist.get_rank() == 0
    out = {}
    for k, v in tensors.items():
        full = v.full_tensor() if isinstance(v, DTensor) else v
        if main:
            out[k] = full.cpu()
    return out


def _shard_like(full: Tensor, like: Tensor | None) -> Tensor:
    """``full`` sharded as ``like`` when that is a DTensor of the same shape, else unchanged (plain
    tensors, optimizer step counts; a mismatch is reported by ``load_state_dict``)."""
    if not isinstance(like, DTensor) or full.shape != like.shape:
        return full
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
