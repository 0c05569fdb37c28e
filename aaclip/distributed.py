"""One run on several processes (GPUs or nodes) with `torchrun`: PyTorch DDP for training,
sharded batches for evaluation. Without torchrun every helper here is a no-op.

`torchrun --nproc_per_node N -m aaclip train|test …` starts N processes; `setup()` joins the
process group torchrun describes in the environment (nccl on GPU, gloo on CPU).

Training (`Replica`): a stage's batch size is the *global* batch. Each epoch draws the index
batches the single-process loader draws (the same seeded DataLoader, over the indices), and
every rank takes one contiguous part of each (batch / N images; the batch must divide). DDP
averages the gradients, each rank's loss weighted by its share of the batch, so every step
is the step of the global batch: equal to single-process training up to float summation
order *when every loss term is a mean of per-image terms and the augmentation draws no
random numbers*. Augmentation draws from torch's global stream, so a rank only sees the
draws of its own images: rank 0 keeps the single-process seed, the others get their own
(never a copy of rank 0's), and with random augmentation DDP training is statistically, not
bitwise, the single-process one. AA-CLIP's stage "text" has two batch-coupled terms from the
released code: the disentangle loss squares a batch mean, and `vv_attention_axis=batch`
attends across the images of a batch; under DDP both see the rank's batch / N images.
Only the stage's parameters require grad (no unused-parameter hang); rank 0 alone writes
checkpoints, resume state and log, then all ranks meet at a barrier. Refused with one line:
methods that update state after a step (`Method.after_step`, e.g. momentum prototypes: each
rank would update its own copy) and methods marked `batch_independent = False`.

Evaluation (`Shards`): batch k of the pass (counted over all classes) is scored by rank
k mod N, each batch exactly the one a single process scores; rank 0 gathers the raw outputs
and ground truth of every class in batch order and computes the per-class normalisation and
all metrics, so every number equals the single-process one.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

WORLD_ENV = "WORLD_SIZE"  # set by torchrun, with RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def seed(self, seed: int) -> int:
        """The seed of this rank's random stream: `seed` on rank 0 (as a single process),
        a distinct derived one on every other rank."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup(device: torch.device) -> Context:
    """Join torchrun's process group (once per process); a single process without it.

    Under torchrun a CUDA device without an index becomes `cuda:LOCAL_RANK`.
    """
    world = int(os.environ.get(WORLD_ENV, "1"))
    if world == 1:
        return Context(0, 1, device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        atexit.register(_teardown)
    return Context(dist.get_rank(), dist.get_world_size(), device)


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- training
def check_method(method: Any, world: int) -> None:
    """Refuse, in one line, a method whose training DDP would silently change."""
    if world == 1:
        return
    from aaclip.methods import Method

    if type(method).after_step is not Method.after_step:
        raise ValueError(
            f"{method.name} updates state after each step (after_step); under torchrun each "
            "rank would update its own copy: train it in one process"
        )
    if not method.batch_independent:
        raise ValueError(
            f"{method.name} mixes the images of a batch (batch_independent=False); under "
            "torchrun each rank sees only its part of the batch: train it in one process"
        )


def per_rank_batch(stage: Any, world: int) -> int:
    """A stage's per-rank batch; its global batch must divide over the processes."""
    if stage.batch_size % world:
        raise ValueError(
            f"stage {stage.name!r}: batch size {stage.batch_size} does not divide over "
            f"{world} processes; choose a multiple of {world} or another --nproc_per_node"
        )
    return stage.batch_size // world


def shard(batch: Sequence[int], rank: int, world: int) -> tuple[list[int], int]:
    """This rank's contiguous part of a global batch and how many images it counts.

    Parts differ by at most one image (a short last batch). An empty part still holds the
    batch's first image, counted 0 (weight 0): every rank must take part in each step.
    """
    mine = [int(i) for i in np.array_split(np.asarray(batch), world)[rank]]
    return (mine, len(mine)) if mine else ([int(batch[0])], 0)


class Replica:
    """A method wrapped in DistributedDataParallel for one stage.

    Only the stage's parameters require grad. `loader()` yields this rank's part of each
    global batch; `global_mean()` turns the rank's loss terms into those of the global batch
    and sets `weight`, the factor of the rank's loss that makes DDP's gradient average the
    gradient of the global batch.
    """

    def __init__(self, method: Any, stage: Any, ctx: Context) -> None:
        per_rank_batch(stage, ctx.world)
        wanted = {id(p) for group in method.param_groups(stage) for p in group["params"]}
        for p in method.adapters.parameters():
            p.requires_grad_(id(p) in wanted)
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        self.ctx = ctx
        self.model = torch.nn.parallel.DistributedDataParallel(method, device_ids=ids)
        self.count = 0  # images of the current global batch on this rank
        self.weight = 1.0

    def __call__(self, stage: Any, batch: dict) -> dict[str, torch.Tensor]:
        return self.model(stage, batch)

    def loader(self, dataset: Dataset, global_batches: Iterable, workers: int) -> Iterator[dict]:
        """Batches of this rank's parts of `global_batches` (index lists or tensors)."""
        parts = [shard([int(i) for i in b], self.ctx.rank, self.ctx.world) for b in global_batches]
        batches = DataLoader(dataset, batch_sampler=[p for p, _ in parts], num_workers=workers)
        for batch, (_, count) in zip(batches, parts, strict=True):
            self.count = count
            yield batch

    def global_mean(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each value averaged over the global batch (all ranks get the same numbers)."""
        stacked = torch.stack([v.detach().float() for v in values.values()])
        packed = torch.cat([stacked * self.count, stacked.new_tensor([float(self.count)])])
        dist.all_reduce(packed)
        total = packed[-1]
        self.weight = self.count * self.ctx.world / total.item()
        return dict(zip(values, packed[:-1] / total, strict=True))


# --------------------------------------------------------------------------- evaluation
class Shards:
    """Which batches of an evaluation pass this rank scores, and their gathering on rank 0.

    Batches are those of one process (consecutive `batch_size` images of a class); batch k of
    the pass goes to rank k mod N.
    """

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or Context()
        self.count = 0  # batches of the pass so far
        self.mine: list[int] = []  # indices, within the current class, of this rank's batches

    def batches(self, n: int, batch_size: int) -> list[list[int]]:
        """This rank's batches (image indices) of a class of n images."""
        chunks = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        w, r = self.ctx.world, self.ctx.rank
        self.mine = [k for k in range(len(chunks)) if (self.count + k) % w == r]
        self.count += len(chunks)
        return [chunks[k] for k in self.mine]

    def gather(self, per_batch: list[list[Any]], device: torch.device) -> list[list[Any]] | None:
        """Lists of per-batch items (one entry per batch of this rank), completed with every
        rank's batches in pass order on rank 0; None on the other ranks. Tensors and
        predictions travel on the CPU and arrive on `device`."""
        if self.ctx.world == 1:
            return per_batch
        cpu = torch.device("cpu")
        moved = [[_to(item, cpu) for item in items] for items in per_batch]
        got: list[Any] | None = [None] * self.ctx.world if self.ctx.is_main else None
        dist.gather_object((self.mine, moved), got, dst=0)
        if got is None:
            return None
        order = sorted((k, r, j) for r, (ks, _) in enumerate(got) for j, k in enumerate(ks))
        return [[_to(got[r][1][i][j], device) for _, r, j in order] for i in range(len(per_batch))]


def _to(item: Any, device: torch.device) -> Any:
    """A tensor or a Prediction on `device`; other items (arrays, path lists) unchanged."""
    return item.to(device) if hasattr(item, "to") and not isinstance(item, np.ndarray) else item
