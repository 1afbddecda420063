"""Per-image memory of each phase at Stable Diffusion 1.5 shape, measured on the CPU (issue 17's memory model).

Each measurement runs in a fresh process (multiprocessing spawn) on SD 1.5-shaped components with random
weights (``benchmarks.sd15_shapes``): the component and its inputs are built, the allocator is trimmed, the
resident set read (``before``), the kernel's peak-RSS mark reset (``/proc/self/clear_refs`` 5; without it,
``ru_maxrss``), the phase run once, and the peak read (``VmHWM``). ``working = peak - before``. Phases:

* ``encode``: VAE encode of a batch of images, no grad;   ``decode``: VAE decode of latents, no grad;
* ``unet_infer``: one UNet forward of a batch of latents, no grad (a CFG sampling step runs 2 per image);
* ``unet_train``: UNet forward + backward of an MSE loss, the trained set ``full`` (every parameter:
  SalUn's default) or ``attn2`` (cross-attention only: ESD-x), optionally with gradient checkpointing.

The per-image term is the slope between batch 1 and 2 at one size (a batch-independent intercept, e.g. the
gradients of the trained set, cancels); for training at 512 px (batch 1 only: minutes per backward pass on
one core) it is the 512 px reading minus the 256 px intercept. The 256 px pairs show linearity in batch, and
``area_ratio_512_over_256`` how the term scales with latent area (4 = linear in area). Weights, gradients and Adam moments are exact byte counts (numel x bytes), never measured.
A point whose predicted peak exceeds ``--cap-gib`` is skipped and recorded as skipped. The GPU model built
on these figures (``erase.memory``) and the README table are estimates; ``--table-only`` rebuilds the table
from the JSON without measuring.

    python -m benchmarks.memory_sd15 --threads 1      # about 15-25 minutes on one core, peak about 15 GB
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import multiprocessing as mp
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from benchmarks.memory_table import markdown_table, table_rows
from benchmarks.sd15_shapes import (TEXT_PARAMETERS, UNET_PARAMETERS, UNET_SD15, VAE_PARAMETERS, build_unet,
                                    build_vae)
from erase.memory import GIB, SD15_PER_IMAGE, gpu_assumptions
from erase.provenance import hardware, versions

RESULTS_FILE = Path(__file__).parent / "results" / "memory_sd15.json"
SCHEMA = "erase.memory_sd15/1"
# (phase, trained set, checkpointing, pixels, batch): batch 1 and 2 at 512 px give the per-image slope of the
# inference phases, the 256 px pair shows linearity in batch and the scaling with latent area
POINTS = [(phase, "", False, px, b) for phase in ("encode", "decode", "unet_infer")
          for px in (256, 512) for b in (1, 2)]
# training at 512 px: batch 1 only (two UNet backward passes at 512 px take minutes on one core); its per-image
# term is then the 512 px reading minus the 256 px intercept
POINTS += [("unet_train", trained, ckpt, px, b) for trained, ckpt in (("full", False), ("attn2", False), ("full", True))
           for px, b in ((256, 1), (256, 2), (512, 1))]


def _rss_kib(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


def _reset_peak() -> str:
    """Reset the kernel's peak-RSS mark; the name of what the peak is then read from."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM after clear_refs"
    except OSError:
        return "ru_maxrss (peak of the whole process: an upper bound)"


def _peak_kib(kind: str) -> int:
    return _rss_kib("VmHWM") if kind.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _phase(phase: str, trained: str, checkpointing: bool, pixels: int, batch: int):
    """(the closure that runs the phase once, exact bytes of the gradients it creates)."""
    latent = pixels // 8
    g = torch.Generator().manual_seed(0)
    if phase in ("encode", "decode"):
        vae = build_vae().requires_grad_(False).eval()
        if phase == "encode":
            x = torch.randn(batch, 3, pixels, pixels, generator=g)
            return (lambda: vae.encode(x).latent_dist.mean), 0
        z = torch.randn(batch, 4, latent, latent, generator=g)
        return (lambda: vae.decode(z).sample), 0
    unet = build_unet()
    z = torch.randn(batch, 4, latent, latent, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    c = torch.randn(batch, 77, UNET_SD15["cross_attention_dim"], generator=g)
    if phase == "unet_infer":
        unet.requires_grad_(False).eval()
        return (lambda: unet(z, t, encoder_hidden_states=c).sample), 0
    grad_bytes = 0
    for name, p in unet.named_parameters():
        p.requires_grad_(trained == "full" or "attn2" in name)
        grad_bytes += p.numel() * p.element_size() if p.requires_grad else 0
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    target = torch.randn(z.shape, generator=g)

    def step():
        F.mse_loss(unet(z, t, encoder_hidden_states=c).sample, target).backward()
    return step, grad_bytes


def _measure(point: tuple, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    phase, trained, checkpointing, pixels, batch = point
    with torch.set_grad_enabled(phase == "unet_train"):
        run, grad_bytes = _phase(*point)
        _trim()
        before = _rss_kib("VmRSS") * 1024
        kind = _reset_peak()
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
    peak = _peak_kib(kind) * 1024
    queue.put({"phase": phase, "trained": trained or None, "gradient_checkpointing": checkpointing,
               "pixels": pixels, "latent": pixels // 8, "batch": batch, "before_bytes": before,
               "peak_bytes": peak, "working_bytes": peak - before, "gradient_bytes_exact": grad_bytes,
               "seconds": round(seconds, 2), "peak_kind": kind})


def measure(point: tuple, threads: int) -> dict[str, Any]:
    """One point in a fresh process; large tensors are mmapped (MALLOC_MMAP_THRESHOLD_) so RSS follows them."""
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(point, threads, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row


def _key(row: dict) -> tuple:
    return row["phase"], row["trained"] or "", row["gradient_checkpointing"]


def per_image(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per phase and trained set: bytes per image at 512 px (slope batch 1 -> 2), the intercept, and checks."""
    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(_key(r) for r in rows if "working_bytes" in r):
        got = {(r["pixels"], r["batch"]): r["working_bytes"] for r in rows if _key(r) == key and "working_bytes" in r}
        name = "/".join(str(k) for k in key[:2] if k) + ("/checkpointing" if key[2] else "")
        entry: dict[str, Any] = {}
        for px in (256, 512):
            if (px, 1) in got and (px, 2) in got:
                entry[f"per_image_{px}_bytes"] = got[(px, 2)] - got[(px, 1)]
                entry[f"intercept_{px}_bytes"] = 2 * got[(px, 1)] - got[(px, 2)]
        if "per_image_512_bytes" not in entry and "per_image_256_bytes" in entry and (512, 1) in got:
            entry["per_image_512_bytes"] = got[(512, 1)] - entry["intercept_256_bytes"]
            entry["per_image_512_from"] = "512 px batch 1 minus the 256 px intercept (batch 2 at 512 px skipped)"
        elif "per_image_512_bytes" not in entry and "per_image_256_bytes" in entry:
            entry["per_image_512_bytes"] = 4 * entry["per_image_256_bytes"]
            entry["per_image_512_from"] = "4 x the 256 px slope: scaled by latent area, 512 px not measured"
        else:
            entry["per_image_512_from"] = "slope between batch 1 and 2 at 512 px"
        if "per_image_256_bytes" in entry and "per_image_512_bytes" in entry and "scaled" not in entry["per_image_512_from"]:
            entry["area_ratio_512_over_256"] = round(entry["per_image_512_bytes"] / entry["per_image_256_bytes"], 2)
        out[name] = entry
    return out


def _predicted_peak(point: tuple, rows: list[dict[str, Any]]) -> float | None:
    """Bytes a point will take, from the 256 px rows of its kind (linear in batch, 4x the area); None: unknown."""
    phase, trained, ckpt, px, batch = point
    same = {(r["pixels"], r["batch"]): r for r in rows if _key(r) == (phase, trained, ckpt) and "peak_bytes" in r}
    if px == 256 or (256, 1) not in same or (256, 2) not in same:
        return None
    slope = same[(256, 2)]["working_bytes"] - same[(256, 1)]["working_bytes"]
    return same[(256, 1)]["before_bytes"] + same[(256, 1)]["working_bytes"] + slope * (4 * batch - 1)


def _point(row: dict[str, Any]) -> tuple:
    return row["phase"], row["trained"] or "", row["gradient_checkpointing"], row["pixels"], row["batch"]


def run(threads: int, cap_gib: float, only: str | None = None, rows: list[dict[str, Any]] | None = None,
        save: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Measure every point not yet in ``rows`` (a resumed run keeps them), ``save`` called after each."""
    rows = list(rows or [])
    done = {_point(r) for r in rows}
    for point in POINTS:
        if (only and point[0] != only) or point in done:
            continue
        predicted = _predicted_peak(point, rows)
        if predicted is not None and predicted > cap_gib * GIB:
            rows.append({"phase": point[0], "trained": point[1] or None, "gradient_checkpointing": point[2],
                         "pixels": point[3], "latent": point[3] // 8, "batch": point[4],
                         "skipped": f"predicted peak {predicted / GIB:.1f} GiB > cap {cap_gib} GiB"})
            print(f"skip {point}: {rows[-1]['skipped']}", flush=True)
            continue
        rows.append(measure(point, threads))
        r = rows[-1]
        print(f"{r['phase']:10s} {r['trained'] or '':5s} ckpt={str(r['gradient_checkpointing']):5s} {r['pixels']} px "
              f"batch {r['batch']}: before {r['before_bytes'] / GIB:.2f} GiB, working {r['working_bytes'] / GIB:.3f} "
              f"GiB ({r['seconds']:.0f} s)", flush=True)
        if save is not None:
            save(rows)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads of each measurement (default 1)")
    p.add_argument("--cap-gib", type=float, default=18.0, help="skip a point predicted to peak above this")
    p.add_argument("--phase", default=None, help="measure one phase only (encode, decode, unet_infer, unet_train)")
    p.add_argument("--results-file", default=str(RESULTS_FILE))
    p.add_argument("--table-only", action="store_true", help="print the README table from the results file")
    p.add_argument("--reuse-rows", action="store_true", help="take the measured rows from the results file and "
                   "rebuild everything derived from them (per-image terms, constants, table) without measuring")
    p.add_argument("--resume", action="store_true", help="keep the rows already in the results file (an "
                   "interrupted run saves after every point) and measure the rest")
    args = p.parse_args(argv)
    if args.threads < 1 or args.cap_gib <= 0:
        p.error("--threads must be >= 1 and --cap-gib positive")
    out = Path(args.results_file)
    if args.table_only:
        print(markdown_table(json.loads(out.read_text())["table"]))
        return 0
    command = "python -m benchmarks.memory_sd15 " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.reuse_rows:  # the rows keep the command that measured them
        command = json.loads(out.read_text()).get("command", command) + f" (derived figures rebuilt by: {command})"
    have = json.loads(out.read_text())["rows"] if (args.reuse_rows or args.resume) and out.is_file() else []
    partial = out.with_name(out.name + ".partial")
    if args.resume and partial.is_file():
        have = json.loads(partial.read_text())["rows"]

    def save(rows: list[dict[str, Any]]) -> None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"rows": rows}, indent=1))
    rows = have if args.reuse_rows else run(args.threads, args.cap_gib, args.phase, have, save)
    report = {
        "schema": SCHEMA, "benchmark": "per-image memory of each phase at SD 1.5 shape (issue 17)",
        "command": command,
        "dtype": "float32", "device": "cpu", "threads": args.threads, "cap_gib": args.cap_gib,
        "shapes": {"unet_parameters": UNET_PARAMETERS, "vae_parameters": VAE_PARAMETERS,
                   "text_encoder_parameters": TEXT_PARAMETERS, "weights": "random (memory does not depend on values)",
                   "unet": "benchmarks.sd15_shapes.UNET_SD15", "vae": "benchmarks.sd15_shapes.VAE_SD15"},
        "how": __doc__.split("\n\n")[1].replace("\n", " "),
        "rows": rows, "per_image": per_image(rows), "library_constants": SD15_PER_IMAGE,
        "gpu_model": gpu_assumptions(), "seconds_of_measurement": round(sum(r.get("seconds", 0) for r in rows), 1),
        "hardware": hardware(), "versions": versions()}
    report["table"] = table_rows()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    partial.unlink(missing_ok=True)
    print(markdown_table(report["table"]))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
