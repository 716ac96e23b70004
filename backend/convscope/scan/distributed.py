"""Scale-out with `torch.distributed`: which batches a process scans, and merging the top-k.

`torchrun --nproc-per-node N -m convscope scan ...` starts N processes; each one
builds its own engine (on `cuda:LOCAL_RANK` with NCCL when CUDA is used, on the
CPU with gloo otherwise), scans every N-th batch of the image list, keeps its own
top-k, and at each checkpoint the processes merge their top-k with `all_gather`.
Rank 0 alone writes the store. Batches are cut from the global image list before
sharding, so every batch (and hence every activation) is the same as in a single
process, and the merge is an exact selection: the result equals a single-process
scan.

The top-k tensors are gathered where they live (on the GPUs with NCCL); the small
control messages (the plan, the image records, "should we stop?") go through a gloo
group on the CPU, so asking every batch whether to stop never waits for the GPU.

A single process uses `LocalContext`, which has the same interface with no
communication.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from convscope.scan.topk import TopK


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class LocalContext:
    """One process: rank 0 of 1."""

    device_name: str = "auto"
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        return obj

    def all_gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    def merge_topk(self, states: dict[str, TopK]) -> None:
        """After this call rank 0 holds the merged top-k and the other ranks hold none."""

    def any(self, flag: bool) -> bool:
        return flag

    def close(self) -> None:
        pass


class DistributedContext(LocalContext):
    """A process of a `torchrun` group (initialises the default process group)."""

    def __init__(self, device_name: str = "auto") -> None:
        import torch.distributed as dist

        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        else:
            device = "cpu"
        super().__init__(device_name=device, rank=rank, world=world)
        self.backend = "nccl" if use_cuda else "gloo"
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            dist.init_process_group(backend=self.backend)
        self._comm_device = torch.device(device)
        # control messages on the CPU: a gloo group beside NCCL, the default group under gloo
        self._control: Any = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None

    def broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self._control, device=torch.device("cpu"))
        return box[0]

    def all_gather_objects(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self._control)
        return out

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `tensor`, on the communication device (the GPU with NCCL)."""
        import torch.distributed as dist

        local = tensor.to(self._comm_device)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local)
        return parts

    def merge_topk(self, states: dict[str, TopK]) -> None:
        if not states:
            return
        names = list(states)
        values = self._all_gather(torch.cat([states[n].values.reshape(-1) for n in names]))
        indices = self._all_gather(
            torch.cat([torch.stack([states[n].images, states[n].positions]).reshape(-1) for n in names])
        )
        if self.rank != 0:
            for state in states.values():
                state.clear()
            return
        value_at = index_at = 0
        for name in names:
            state = states[name]
            size = state.values.numel()
            others = []
            for rank in range(1, self.world):
                pair = indices[rank][index_at : index_at + 2 * size].view(2, *state.values.shape)
                others.append(
                    TopK(
                        state.k,
                        state.width,
                        values[rank][value_at : value_at + size].view_as(state.values).clone(),
                        pair[0].clone(),
                        pair[1].clone(),
                    )
                )
            state.merge(*others)
            value_at += size
            index_at += 2 * size

    def any(self, flag: bool) -> bool:
        import torch.distributed as dist

        tensor = torch.tensor([1 if flag else 0])  # on the CPU: no wait for the GPU's queue
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self._control)
        return bool(tensor.item())

    def close(self) -> None:
        import torch.distributed as dist

        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()


def make_context(device_name: str = "auto") -> LocalContext:
    """The context of this process: distributed under torchrun (WORLD_SIZE > 1), local otherwise."""
    if launched_by_torchrun():
        return DistributedContext(device_name)
    return LocalContext(device_name)
