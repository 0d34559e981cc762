"""Which rows of a global batch one process trains on (data-parallel training)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of a global batch of ``total`` rows belong to this process."""
    start: int
    stop: int
    total: int

    @classmethod
    def of_process(cls, rows: int, rank: int, num_processes: int) -> "Shard":
        """The rows of process ``rank`` when each of ``num_processes`` has ``rows`` of them."""
        return cls(rank * rows, (rank + 1) * rows, rows * num_processes)

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if (self.start, self.stop) == (0, self.total) else tensor[self.start:self.stop]


def shard_of(batch_len: int, num_processes: int, rank: int) -> list[int]:
    """Positions of ``rank``'s rows in a global batch of ``batch_len`` entries. A short last batch
    is padded with its own first entries up to a multiple of ``num_processes`` so every process
    trains the same number of rows (the gradient average then stays a plain mean, and
    :meth:`Shard.of_process` finds a process's rows from its own row count)."""
    per = -(-batch_len // num_processes)
    padded = list(range(batch_len)) + [i % batch_len for i in range(per * num_processes - batch_len)]
    return padded[rank * per:(rank + 1) * per]
