"""Which clips a training run sees, and in what order: ``EpochSampler`` and
``expression_pairs`` (``--pair-expressions``)."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """A per-epoch permutation from (seed, epoch), split across ranks, startable mid-epoch.

    Every rank gets the same number of indices (the order is padded by wrapping, as
    ``DistributedSampler`` does), so all ranks take the same number of steps.

    With ``groups`` (lists of dataset indices that belong together, e.g. two expressions of
    one video), whole groups are shuffled and dealt to ranks, so a batch whose size is a
    multiple of the group size holds complete groups.
    """

    def __init__(
        self, size: int, rank: int, world: int, seed: int, groups_fn=None, group_size: int = 1
    ) -> None:
        self.size, self.rank, self.world, self.seed = size, rank, world, seed
        self.groups_fn, self.group_size = groups_fn, group_size
        self.epoch, self.start = 0, 0
        units = self.size if groups_fn is None else len(groups_fn(0))
        self.per_rank = math.ceil(units / world) * group_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Deal ``epoch``'s order, skipping its first ``start`` indices (a resumed run)."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        """This rank's indices of the whole epoch, from its start."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        units = [[i] for i in range(self.size)] if self.groups_fn is None else self.groups_fn(self.epoch)
        order = [units[i] for i in torch.randperm(len(units), generator=generator).tolist()]
        per_rank_units = self.per_rank // self.group_size
        order += order[: per_rank_units * self.world - len(order)]
        return [index for unit in order[self.rank :: self.world] for index in unit]

    def __iter__(self):
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def expression_pairs(dataset, seed: int):
    """Groups of two clips of one video referring to different objects, new each epoch.

    Two expressions over the same frames that differ in their target can only be told apart
    by reading the text, which the class loss and JSC then have to do.
    """
    by_clip = defaultdict(list)
    for index, record in enumerate(dataset.records):
        by_clip[(record.video, record.frame_id)].append(index)

    def pairs(epoch: int) -> list[list[int]]:
        # A str seed is hashed with SHA-512, the same in every process; hash() of a str is
        # salted per process (PYTHONHASHSEED), which made runs and resumed runs differ.
        rng = random.Random(f"{seed}:{epoch}:pairs")
        result = []
        for key in sorted(by_clip):
            indices = list(by_clip[key])
            rng.shuffle(indices)
            while len(indices) >= 2:
                first = indices.pop()
                other = next(
                    (i for i in indices if dataset.records[i].obj_id != dataset.records[first].obj_id),
                    indices[0],
                )
                indices.remove(other)
                result.append([first, other])
        return result

    return pairs
