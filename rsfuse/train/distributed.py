"""Multi-process training: process-group setup, FSDP2 sharding and torch.distributed.checkpoint (DCP) save/resume.

Launched by ``torchrun`` (environment ``WORLD_SIZE`` > 1) the recipe calls `init_distributed`, which starts a ``gloo``
(CPU) or ``nccl`` (GPU) process group and a one-dimensional device mesh. `shard_model` applies
``torch.distributed.fsdp.fully_shard`` to each given unit (decoder layers, vision-tower blocks, injectors) and then to
the root module, so parameters are gathered one unit at a time. `save_sharded_state` / `load_sharded_state` write and
read model and optimizer state with DCP (each rank writes its shard, any world size can reload). `full_state_dict`
gathers the unsharded weights on rank 0 for ``final/``.
"""

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistributedContext",
    "init_distributed",
    "shard_model",
    "save_sharded_state",
    "load_sharded_state",
    "full_state_dict",
    "all_reduce_sum",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``, and the FSDP device mesh (None alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mesh: object = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def close(self) -> None:
        if self.is_distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(*, prefer_cuda: bool = True) -> DistributedContext:
    """Read ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (set by torchrun); start gloo on CPU or nccl on GPU when > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = prefer_cuda and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size <= 1:
        return DistributedContext(device=device)
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30)
        )
    mesh = init_device_mesh(device.type, (world_size,))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, mesh=mesh)


def shard_model(
    model: nn.Module, units: list[nn.Module], context: DistributedContext, *, param_dtype: torch.dtype | None = None
) -> nn.Module:
    """``fully_shard`` each unit, then the root; ``param_dtype`` (e.g. bf16) turns on FSDP mixed precision with fp32
    gradient reduction. Returns the (in-place converted) model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mesh": context.mesh}
    if policy is not None:
        kwargs["mp_policy"] = policy
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return model


def save_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, folder: str | os.PathLike) -> None:
    """Every rank writes its shard of model and optimizer state into ``folder`` with DCP."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(Path(folder)))


def load_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, folder: str | os.PathLike) -> None:
    """Load a DCP checkpoint written by `save_sharded_state` into the sharded ``model`` and ``optimizer``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    # Partial load: optimizer state exists only for parameters that have received a gradient (an unused parameter,
    # e.g. a tower's final norm when an inner hidden state is read, has none in the checkpoint). Model keys are
    # checked below so a missing weight still fails.
    dcp.load(state, checkpoint_id=str(Path(folder)), planner=DefaultLoadPlanner(allow_partial_load=True))
    metadata = dcp.FileSystemReader(str(Path(folder))).read_metadata()
    missing = [key for key in model_state if f"model.{key}" not in metadata.state_dict_metadata]
    if missing:
        raise RuntimeError(f"{folder}: DCP checkpoint lacks model weights {missing[:5]}")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def full_state_dict(model: nn.Module, context: DistributedContext) -> dict[str, torch.Tensor]:
    """The unsharded model state on the CPU: complete on rank 0, empty on the others (single process: plain copy)."""
    if not context.is_distributed:
        return {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def all_reduce_sum(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum ``value`` over ranks (identity alone)."""
    if context.is_distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
