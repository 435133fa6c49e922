"""``mistral-ft train R.yaml --nproc N``: start N training processes through accelerate's launcher.

This is ``accelerate launch [--config_file C] --num_processes N -m finetune train ...`` run inside
this process, so there is one multi-process path to test and document.  On a machine without CUDA
accelerate runs the processes on CPU over gloo; with GPUs each process takes one (``LOCAL_RANK``).
A free local port is chosen so two runs on one machine never collide.  When a process fails, its own
one-paragraph error has already been printed; the launcher's traceback about the failed child is
replaced by one line with the exit status.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import torch
from rich.console import Console

from finetune.errors import FinetuneError


def launch_arguments(nproc: int, train_args: list[str], config_file: str | None = None) -> list[str]:
    """The arguments of ``accelerate launch`` that run ``python -m finetune train <train_args>`` N times."""
    if config_file:
        args = ["--config_file", config_file]
    else:
        args = ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    args += ["--num_processes", str(nproc), "--main_process_port", str(_free_port())]
    return args + ["-m", "finetune", "train", *train_args]


def launch(nproc: int, train_args: list[str], config_file: str | None, console: Console) -> int:
    """Run N processes to completion; 0, or the exit status of the first process that failed."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FinetuneError(
            "--nproc was given inside a process that accelerate or torchrun already launched.",
            hint="Use either `accelerate launch ... -m finetune train R.yaml` or `mistral-ft train R.yaml --nproc N`, not both.",
        )
    if config_file and not Path(config_file).is_file():
        raise FinetuneError(
            f"--accelerate-config {config_file}: no such file.",
            hint="Use one of configs/accelerate/*.yaml (ddp, fsdp, deepspeed_zero2, deepspeed_zero3), or leave the "
            "option out for plain DDP.",
        )
    gpus = torch.cuda.device_count()
    if gpus and nproc > gpus:
        raise FinetuneError(
            f"--nproc {nproc}: this machine has {gpus} CUDA device(s); one process per GPU.",
            hint=f"Use --nproc {gpus} or fewer.",
        )
    from torch.distributed.elastic.multiprocessing.api import SignalException

    args = launch_command_parser().parse_args(launch_arguments(nproc, train_args, config_file))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # we report failures ourselves
    # On Ctrl-C the launcher passes the signal on, then waits this long before killing the processes:
    # long enough for them to finish the step and write their checkpoint (finetune.train.callbacks).
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "1800")
    try:
        launch_command(args)
    except SignalException:
        console.print("[yellow]interrupted: see the processes' messages above for the checkpoint[/]")
        return 130
    except ChildFailedError as error:
        failures = sorted(error.failures.items())
        # the process that failed by itself (status > 0), not one the launcher then stopped (SIGTERM)
        rank, failure = next(((r, f) for r, f in failures if f.exitcode > 0), failures[0])
        console.print(f"[red]process {rank} of {nproc} exited with status {failure.exitcode}[/]")
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
