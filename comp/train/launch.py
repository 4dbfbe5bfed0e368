"""``comp train --devices N``: the same command again under torchrun, one process a device.

Reads and writes nothing itself: the processes it starts are ordinary ``comp`` commands,
each joining the process group from the environment torchrun sets.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from comp.errors import ConfigError


def launch_distributed(
    args: list[str],
    *,
    devices: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    device: str = "auto",
) -> int:
    """Run ``comp <args>`` under torchrun, ``devices`` processes here; return its exit code."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda and devices > torch.cuda.device_count():
        raise ConfigError(f"--devices {devices}: only {torch.cuda.device_count()} GPU(s) here")
    env = dict(os.environ)
    # torchrun would pin every process to one thread; on CPU they share the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    rendezvous = (
        ["--standalone"]
        if nnodes == 1
        else [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            f"--master-addr={master_addr}",
            f"--master-port={master_port}",
        ]
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        f"--nproc-per-node={devices}",
        "-m",
        "comp",
        *args,
    ]
    return subprocess.call(cmd, env=env)
