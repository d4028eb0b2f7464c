"""torchrun plumbing: which process this is (DistInfo), setting up and closing the process group, and
gathering or broadcasting Python objects between the processes (each a no-op in a single process).

torch.distributed is imported only when torchrun started several processes (or a device is resolved).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from maskcls.utils import UserError, resolve_device

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1


def setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Single process, or DDP when launched by torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise UserError(
                f"torchrun started {world} processes on this node but only {torch.cuda.device_count()} GPU(s) "
                "are visible; lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank), device


def close_distributed(info: DistInfo) -> None:
    if info.ddp:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def gather(obj: Any, info: DistInfo) -> list:
    if not info.ddp:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, info: DistInfo) -> Any:
    if not info.ddp:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.ddp:
        import torch.distributed as dist

        dist.barrier()
