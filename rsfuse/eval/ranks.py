"""How the processes of a sharded evaluation (``torchrun --nproc_per_node N``) work together: the process group
started from torchrun's environment (`launch`), object collectives over it (`RankGroup`: gather, broadcast, a value
computed once on rank 0), and errors carried to every rank with their type (`capture`, `picklable`,
`RankGroup.raise_first`), so that every process stops with the same one-line message.

Evaluation only exchanges small Python objects (answers, errors, fingerprints), so a gloo group serves GPU runs too.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any

from rsfuse.eval.generation import EvalInputError
from rsfuse.eval.predictions import PredictionsMismatchError
from rsfuse.recipes.config_values import ConfigError

__all__ = ["REPORTED_ERRORS", "RankGroup", "capture", "picklable", "launch", "finish"]


# Expected errors: the CLI prints them as one line (exit status 2); under torchrun they reach every rank by type.
REPORTED_ERRORS = (ConfigError, PredictionsMismatchError, EvalInputError)


class RankGroup:
    """The processes sharing an evaluation: this one is ``rank`` of ``world_size`` (a started process group when
    more than one). Collectives are object all-gathers over whatever backend the group runs."""

    def __init__(self, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"evaluate: rank {rank} of world_size {world_size} is not a valid shard")
        if world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                raise ValueError("evaluate: world_size > 1 needs a started torch.distributed process group")
        self.rank, self.world_size = rank, world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order (also a barrier)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shared(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` on rank 0, its value on every rank (hashing weights once, not once per process)."""
        return self.broadcast(compute() if self.is_main else None)

    def raise_first(self, errors: Sequence[BaseException | None]) -> None:
        """Raise the first rank's error on every process (its type kept when it is one the CLI reports)."""
        for rank, error in enumerate(errors):
            if error is None:
                continue
            if rank == self.rank:
                raise error
            kind = type(error) if isinstance(error, REPORTED_ERRORS) else RuntimeError
            relayed = kind(f"rank {rank}: {error}")
            relayed.relayed = True
            raise relayed


def capture(action: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """``(action(), None)``, or ``(None, error)`` when it raises: an error to hand to every rank before raising."""
    try:
        return action(), None
    except Exception as error:  # noqa: BLE001 (handed to every rank, then raised)
        return None, error


def picklable(error: BaseException | None) -> BaseException | None:
    """The error as sent to the other ranks: its type when the CLI reports that type, else a RuntimeError."""
    if error is None:
        return None
    kind = type(error) if isinstance(error, REPORTED_ERRORS) else RuntimeError
    return kind(str(error))


def launch() -> tuple[int, int, int, bool]:
    """``(rank, world_size, local_rank, started)`` from torchrun's environment; with more than one process a gloo
    group is started here unless one runs already (evaluation only gathers small objects, so gloo serves GPUs too)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return 0, 1, 0, False
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        return rank, world_size, local_rank, False
    dist.init_process_group(backend="gloo", timeout=datetime.timedelta(minutes=60))
    return rank, world_size, local_rank, True


def finish(started: bool) -> None:
    """End the process group `launch` started (``started``); nothing otherwise."""
    if started:
        import torch.distributed as dist

        dist.destroy_process_group()
