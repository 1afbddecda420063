"""Benchmark: how long `erase-concept --method esd --concept Candy` takes on idle and on shared cores.

Each run is the real command in a fresh process (the OpenMP wait policy is fixed when torch
loads, so it cannot be switched inside one process), on the embedded model with its default
preset, with no OpenMP variable in its environment unless the configuration sets one:

* old default: torch's thread count (one per core), what erase-concept used before
  ``pipelines.threads`` (``--threads <torch's default>``);
* new default: the command as it ships (``--threads 0``: one thread for the 1.7 M-parameter UNet);
* the remedy not chosen: torch's thread count with ``OMP_WAIT_POLICY=PASSIVE``.

"Shared" means ``--busy`` other CPU-bound processes started here and killed at the end run
alongside: Python busy loops (one core each), or small torch jobs with torch's default thread
count (convolutions of the embedded UNet's size in a loop: another erase job, as far as OpenMP is
concerned). With the old default a full erase on shared cores takes far too long, so every
configuration is also timed for ``--steps`` optimizer steps of the same command.
Before every run the 1-minute load average must be at most ``--max-load`` (other people's work
on the machine); otherwise the run waits a minute and looks again, a few times, and records
what it found.

    python -m benchmarks.threads --results-file benchmarks/results/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from erase.provenance import versions
from pipelines.threads import available_cores, busy_cores, load_average

RESULTS_FILE = Path(__file__).parent / "results" / "threads.json"
COMMAND = ["--method", "esd", "--concept", "Candy", "--quiet", "--overwrite"]
OPENMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def torch_default_threads() -> int:
    """The thread count torch starts with in a fresh process (what erase-concept used before)."""
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], env=_env({}), capture_output=True, text=True,
                              check=True).stdout)


def _env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of one run: no OpenMP variable unless the configuration sets one."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS}
    env.update(extra)
    return env


def configurations(default_threads: int) -> dict[str, dict[str, Any]]:
    return {
        "old default": {"env": {}, "threads": default_threads, "what": f"torch's {default_threads} threads"},
        "new default": {"env": {}, "threads": 0, "what": "--threads 0: 1 thread for this model"},
        "passive": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}, "threads": default_threads,
                    "what": f"OMP_WAIT_POLICY=PASSIVE, {default_threads} threads"},
    }


def wait_until_quiet(max_load: float, tries: int, pause: float) -> dict[str, Any]:
    """Wait (``pause`` s at a time, ``tries`` times at most) for the 1-minute load to fall to ``max_load``."""
    waited = 0
    for _ in range(tries):
        load = load_average()
        if load is None or load <= max_load:
            break
        print(f"  load {load:.2f} > {max_load}: waiting {pause:.0f} s", file=sys.stderr, flush=True)
        time.sleep(pause)
        waited += pause
    load = load_average()
    return {"load_1min_before": load, "waited_s": waited, "busy_cores_before": busy_cores(1.0),
            "quiet": load is None or load <= max_load}


NEIGHBOURS = {
    "idle": None,
    "busy loops": "while True: pass",
    "torch jobs": "import torch\nx, w = torch.randn(2, 64, 16, 16), torch.randn(64, 64, 3, 3)\n"
                    "while True: torch.nn.functional.conv2d(x, w, padding=1)",
}


def start_busy(machine: str, count: int) -> list[subprocess.Popen]:
    """``count`` CPU-bound processes of the kind ``machine`` names (none when idle), as other users' jobs."""
    code = NEIGHBOURS[machine]
    return [] if code is None else [subprocess.Popen([sys.executable, "-c", code], env=_env({}))
                                    for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        p.kill()
        p.wait()


def time_erase(config: dict[str, Any], steps: int | None, work: Path) -> dict[str, Any]:
    """One erase-concept run in a fresh process: wall seconds and what its erase.json recorded."""
    out = work / "artifact"
    argv = [sys.executable, "-m", "erase.cli", *COMMAND, "--output", str(out), "--threads", str(config["threads"])]
    argv += ["--steps", str(steps)] if steps is not None else []
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=_env(config["env"]), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"erase-concept failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    record = json.loads((out / "erase.json").read_text())
    shutil.rmtree(out)
    cost = record["cost"]
    return {"wall_s": round(wall, 1), "erase_seconds": cost["seconds"], "steps": record["train"]["steps"],
            "seconds_per_step": round(cost["seconds"] / record["train"]["steps"], 3),
            "torch_threads": cost["torch_threads"], "thread_choice": cost["threads"],
            "load_1min_after": load_average()}


def run_benchmark(busy: int, shared_steps: int, max_load: float, tries: int, pause: float,
                  cases: Sequence[tuple[str, str, int | None]] | None = None) -> dict[str, Any]:
    default_threads = torch_default_threads()
    configs = configurations(default_threads)
    cases = cases or [("old default", "idle", None), ("new default", "idle", None),
                      ("new default", "busy loops", None), ("new default", "torch jobs", None),
                      *[(name, machine, shared_steps) for machine in NEIGHBOURS
                        for name in ("old default", "new default", "passive")]]
    runs = []
    with tempfile.TemporaryDirectory(prefix="threads-bench-") as tmp:
        for name, machine, steps in cases:
            print(f"{name}, {machine}, {steps or 'preset'} steps", file=sys.stderr, flush=True)
            before = wait_until_quiet(max_load, tries, pause)
            others = start_busy(machine, busy)
            try:
                time.sleep(6 if others else 0)  # let the other processes start and take their cores
                result = time_erase(configs[name], steps, Path(tmp))
            finally:
                stop(others)
            runs.append({"configuration": name, "what": configs[name]["what"], "machine": machine,
                         "other_busy_processes": len(others), "steps_asked": steps or "preset (200)",
                         **before, **result})
            print(f"  {result['erase_seconds']:.1f} s ({result['seconds_per_step']} s/step, "
                  f"{result['torch_threads']} threads)", file=sys.stderr, flush=True)
    return {
        "benchmark": "erase-concept --method esd --concept Candy (embedded minicanvas-sd, default preset: ESD-x, "
                     "200 steps, batch 2, 25-step DDIM)",
        "timing": "erase_seconds = erase.json cost.seconds (setup + training); wall_s adds interpreter start, "
                  "imports, model loading and saving",
        "shared": f"{busy} other CPU-bound processes running throughout the run: python busy loops, or torch jobs "
                  f"with torch's default threads ({NEIGHBOURS['torch jobs']!r}); with the old default a full erase "
                  f"there is too slow, so runs of {shared_steps} steps compare all three configurations on every "
                  f"machine (erase_seconds includes ~1 s of setup)",
        "load_rule": f"before each run the 1-minute load average had to be <= {max_load} (waiting {pause:.0f} s up to "
                     f"{tries} times); load_1min_before is what the run started with",
        "hardware": {"cpu": _cpu_name(), "cores_available": available_cores(), "machine": platform.machine(),
                     "torch_default_threads": default_threads, "torch": torch.__version__,
                     "parallel_backend": "OpenMP (GNU libgomp)" if "OpenMP" in torch.__config__.parallel_info()
                     else torch.__config__.parallel_info().splitlines()[-1]},
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "runs": runs,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(results: dict[str, Any]) -> str:
    """The README table: one row per configuration, one column per (machine, steps) case."""
    columns = list(dict.fromkeys((r["machine"], r["steps"]) for r in results["runs"]))
    head = [f"{m}, {s} steps" for m, s in columns]
    lines = ["| default | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name in dict.fromkeys(r["configuration"] for r in results["runs"]):
        cells = []
        for machine, steps in columns:
            run = next((r for r in results["runs"] if r["configuration"] == name and (r["machine"], r["steps"])
                        == (machine, steps)), None)
            cells.append("" if run is None else f"{run['erase_seconds']:.1f} s ({run['torch_threads']} thr, "
                                                f"load {run['load_1min_before']:.2f})")
        what = next(r["what"] for r in results["runs"] if r["configuration"] == name)
        lines.append(f"| {name}: {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-file", default=str(RESULTS_FILE))
    p.add_argument("--busy", type=int, default=2, help="other CPU-bound processes on a shared machine (default 2)")
    p.add_argument("--steps", type=int, default=20, help="steps of the shared-machine comparison (default 20)")
    p.add_argument("--max-load", type=float, default=0.7, help="1-minute load average to wait for before a run")
    p.add_argument("--tries", type=int, default=5, help="times to wait a minute for that load")
    args = p.parse_args(argv)
    results = run_benchmark(args.busy, args.steps, args.max_load, args.tries, 60.0)
    path = Path(args.results_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results), end="")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
