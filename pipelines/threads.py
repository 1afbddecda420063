"""CPU threads for torch: a default that stays fast when other processes share the cores, and stays reproducible.

Measured on 2 cores (README "Threads", ``benchmarks/threads.py``): torch runs each CPU op on an
OpenMP team, one thread per core by default, and a thread that reaches the end of an op spins a
while before it sleeps. A small model runs thousands of tiny ops per step, so when another
process holds a core, each op waits for a descheduled team member while its partner spins: an
ESD step of the embedded model took 7x (two busy loops beside it) to 20x (two other torch jobs)
longer with 2 threads than with one. Two remedies, measured on UNet forwards of three sizes:

* one thread: nothing waits for anyone. On the 1.7 M-parameter embedded UNet (16x16 latents)
  2 threads are only 1.09x faster than one on idle cores, and 3x slower on shared ones; from
  6.9 M parameters (32x32 latents) 2 threads are 1.4x faster idle, 2x on an SD 1.5-sized UNet.
* ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once): halves the shared-core penalty of 2 threads but
  makes idle runs 3.2x slower on the embedded UNet and 1.3x slower at 42 M parameters, because
  every op must wake the team again. Not set here; an environment that sets it is respected.

So the default (``--threads 0``) is one thread for models under ``SMALL_MODEL`` parameters and
the cores this process may use otherwise. It depends only on the model and the machine, never on
the load of the moment: results depend (in the last bits) on the thread count, and a seeded run,
or a run resumed after a kill, must give the same weights whatever else the machine is doing.
When other processes keep cores busy at the start of a multi-threaded run, a note says so.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

SMALL_MODEL = 5_000_000  # parameters of the network that does the work (the UNet); below it: one thread
MAX_THREADS = 1024
SAMPLE_SECONDS = 0.2  # how long other processes' CPU use is sampled before a multi-threaded run
BUSY_NOTE = 0.5  # cores kept busy by others from which a multi-threaded run prints a note


class ThreadsError(ValueError):
    """A thread count out of range; the message is one line."""


def check_threads(threads: int | None) -> None:
    """Refuse a ``--threads`` value out of range (0: the default for the model; None: the process's count)."""
    if threads is not None and not 0 <= threads <= MAX_THREADS:
        raise ThreadsError(f"--threads must be between 0 (the default) and {MAX_THREADS}, got {threads}")


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota, shared between the
    local processes of an ``accelerate launch`` (``LOCAL_WORLD_SIZE``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local))


def default_threads(parameters: int, cores: int | None = None) -> int:
    """One thread for a model under ``SMALL_MODEL`` parameters, else every available core."""
    return 1 if parameters < SMALL_MODEL else (cores or available_cores())


def _cpu_times() -> dict[str, tuple[int, int]]:
    """Per CPU (``cpu0`` ...): (busy, total) clock ticks since boot, from ``/proc/stat``."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
                out[name] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores (of those this process may run on) that other processes kept busy over ``seconds``; None off Linux.

    Sampled while this process sleeps; the little CPU it used meanwhile is subtracted.
    """
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        before, own_before, t0 = _cpu_times(), time.process_time(), time.monotonic()
        time.sleep(seconds)
        after, own, elapsed = _cpu_times(), time.process_time() - own_before, time.monotonic() - t0
    except (OSError, AttributeError, ValueError):
        return None
    cpus = mine & before.keys() & after.keys()
    total = sum(after[c][1] - before[c][1] for c in cpus)
    if not cpus or total <= 0:
        return None
    busy = sum(after[c][0] - before[c][0] for c in cpus)
    return max(0.0, busy / (total / len(cpus)) - own / elapsed)


def load_average() -> float | None:
    """The 1-minute load average of the machine (this process included), or None where there is none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def use_threads(threads: int | None, parameters: int, check_load: bool = True) -> dict[str, Any]:
    """Set torch's CPU thread count for a run on a model of ``parameters`` parameters; returns what and why.

    ``threads``: 0 = ``default_threads``, N = N, None = leave the process's count. What is returned
    goes to ``erase.json`` (``cost.threads``); ``note`` is a line to show the user, or None. With
    ``check_load`` a multi-threaded run samples the other processes' CPU use (0.2 s) for that note.
    """
    import torch  # the project's packages load it anyway; here it is only needed when a run starts

    check_threads(threads)
    cores = available_cores()
    if threads is None:
        info = {"torch_threads": torch.get_num_threads(), "chosen_by": "process (unchanged)"}
    elif threads == 0:
        info = {"torch_threads": default_threads(parameters, cores),
                "chosen_by": f"default: {'one thread below' if parameters < SMALL_MODEL else 'all cores from'} "
                             f"{SMALL_MODEL:,} parameters"}
    else:
        info = {"torch_threads": threads, "chosen_by": "--threads"}
    torch.set_num_threads(info["torch_threads"])
    busy = busy_cores() if check_load and info["torch_threads"] > 1 else None
    info.update(model_parameters=parameters, cores=cores, load_1min=load_average(),
                busy_cores_at_start=None if busy is None else round(busy, 2))
    info["note"] = None
    if busy is not None and busy >= BUSY_NOTE:
        info["note"] = (f"other processes keep {busy:.1f} of {cores} cores busy; {info['torch_threads']} threads "
                        f"can run many times slower beside them, --threads 1 does not (README 'Threads')")
    return info


@contextmanager
def restore_threads() -> Iterator[None]:
    """Give the process its thread count back after the block, for commands called in-process (tests, notebooks)."""
    import torch

    previous = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(previous)
