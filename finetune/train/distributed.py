"""What a training run needs to know about the other processes of an ``accelerate launch``.

One process (or a plain ``mistral-ft train``) is the world of size one and every helper here is a
no-op.  Under ``accelerate launch`` (DDP on NCCL, or gloo on CPU; FSDP; DeepSpeed) the processes
agree on one run folder, prepare the data once (the main process does the work and hands the result
to the others over a gloo group with a long time-out, so a large data set never trips the training
group's time-out), and only the main process writes files or prints.
"""

from __future__ import annotations

import os
import pickle
from datetime import timedelta
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

# Preparing a very large data set on the main process may take hours; the others wait this long.
DATA_TIMEOUT = timedelta(hours=12)


def state():
    """accelerate's process state, created on first use with the trainer's time-out (``ddp_timeout``)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=1800))


def is_launched() -> bool:
    """True inside a process started by ``accelerate launch`` / ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return state().num_processes if is_launched() else 1


def local_processes() -> int:
    """Processes on this machine (they share its CPU memory)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main() -> bool:
    return state().is_main_process if is_launched() else True


def barrier() -> None:
    if is_launched():
        state().wait_for_everyone()


_gloo = None


def _gloo_group():
    """A gloo group over every process (CPU objects and flags, whatever the training backend)."""
    global _gloo
    if _gloo is None:
        import torch.distributed as dist

        state()  # the default group must exist before a new one
        _gloo = dist.new_group(backend="gloo", timeout=DATA_TIMEOUT)
    return _gloo


def main_computes(fn: Callable[[], T]) -> T:
    """``fn()`` run on the main process only; every process returns its result (or raises its error).

    The result travels pickled over a dedicated gloo group whose time-out is :data:`DATA_TIMEOUT`.
    An exception on the main process is re-raised on all of them, so a bad row stops every process
    with the same message instead of leaving the others waiting.
    """
    if not is_launched():
        return fn()
    import torch.distributed as dist

    group = _gloo_group()
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as error:  # noqa: BLE001 - re-raised below, on every process
            outcome = ("error", error)
        try:
            box = [pickle.dumps(outcome)]
        except Exception as error:  # noqa: BLE001 - an unpicklable result must not leave the others waiting
            outcome = ("error", RuntimeError(f"cannot share the prepared data with the other processes: {error}"))
            box = [pickle.dumps(outcome)]
    else:
        box = [None]
    dist.broadcast_object_list(box, src=0, group=group)
    kind, value = outcome if is_main() else pickle.loads(box[0])
    if kind == "error":
        raise raised_everywhere(value)
    return value


def raised_everywhere(error: Exception) -> Exception:
    """Mark an error every process raises alike, so only the main process reports it (see the CLI)."""
    error.raised_everywhere = True
    return error


def effective_batch(micro_batch: int, accumulation: int) -> dict:
    """micro-batch × accumulation × processes, as recorded in the run's summary."""
    n = world_size()
    return {
        "micro_batch_size": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "processes": n,
        "effective_batch_size": micro_batch * accumulation * n,
    }


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any of them (one small all-reduce over gloo)."""
    if not is_launched():
        return flag
    import torch.distributed as dist

    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_gloo_group())
    return bool(value.item())


def parallelism(accelerator) -> str:
    """How the trainer spreads the work: MULTI_CPU / MULTI_GPU (DDP), FSDP, DEEPSPEED, or a single process."""
    return accelerator.distributed_type.value if is_launched() else "single process"


def unmet_request(accelerator) -> str | None:
    """A warning when the accelerate config asked for FSDP or DeepSpeed but the processes run plain DDP.

    accelerate enables both only on GPUs (and DeepSpeed only when installed); on a CPU machine the same
    config silently gives DDP over gloo, which holds a full copy of the model in every process.
    """
    asked = [name for name, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED"))
             if os.environ.get(env, "false").lower() == "true"]
    got = parallelism(accelerator)
    if not asked or asked[0] == got:
        return None
    return (
        f"the accelerate config asks for {asked[0]}, but accelerate runs {got} here ({asked[0]} needs CUDA "
        "devices): every process holds a whole copy of the model"
    )


def shutdown() -> None:
    """Tear the process groups down before exit; left to interpreter shutdown, gloo's threads may abort."""
    import torch.distributed as dist

    global _gloo
    if is_launched() and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _gloo = None
