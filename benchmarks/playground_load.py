"""20 concurrent generate requests against erase-playground, each checked pixel by pixel.

Starts ``erase-playground`` (the command a user runs) on a free local port with the embedded model and
one artifact, sends ``--requests`` grid requests at once from as many threads (``gradio_client``), each
with its own first seed, waits for all, then draws every request's rows again in this process (base and
erased model, the same seeds in one batch) and compares each returned image with it (within one grey
level: the PNG round trip is lossless). The page runs one model call at a time, the others wait in its
queue. The server is a black box here: this script imports nothing from ``app``.

    python -m benchmarks.playground_load --artifact outputs/erasure-minicanvas/esd-candy
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from erase.loading import load_erased_pipeline
from erase.provenance import folder_hash, hardware, relative_path, versions
from pipelines.stable_diffusion import generate, load_pipeline

RESULTS_FILE = Path(__file__).parent / "results" / "playground_load.json"
PROMPT = "A Fish image in Candy style."


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True, help="an erase-concept artifact of the embedded model")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--seeds", type=int, default=4, help="seeds per request (the page's default)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--results-file", default=str(RESULTS_FILE))
    args = p.parse_args(argv)
    from gradio_client import Client  # gradio's client: only this script needs it

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "app.playground", "--artifact", args.artifact, "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    first_seeds = [1000 + 10 * i for i in range(args.requests)]

    def one(seed: int) -> tuple[int, float, list]:
        t = time.perf_counter()
        gallery, _ = Client(url, verbose=False).predict(PROMPT, seed, args.seeds, args.steps, 5.0, api_name="/grid")
        return seed, time.perf_counter() - t, gallery

    try:
        for _ in range(600):  # the server loads its models first
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    print("error: erase-playground exited before serving", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.requests) as pool:
            answers = list(pool.map(one, first_seeds))
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(30)
    base = load_pipeline(None)
    erased = load_erased_pipeline(args.artifact)
    worst = 0
    for seed, _, gallery in answers:
        seeds = list(range(seed, seed + args.seeds))
        want = [image for pipe in (base, erased) for image in
                generate(pipe, [PROMPT] * len(seeds), seeds, steps=args.steps, guidance_scale=5.0,
                         batch_size=len(seeds))]
        if len(gallery) != len(want):
            print(f"error: request with seed {seed} got {len(gallery)} images, expected {len(want)}", file=sys.stderr)
            return 1
        for item, image in zip(gallery, want):
            shown = np.asarray(Image.open(item["image"]).convert("RGB")).astype(int)
            scale = shown.shape[0] // image.shape[0]
            worst = max(worst, int(np.abs(shown[::scale, ::scale] - image.astype(int)).max()))
    latencies = sorted(t for _, t, _ in answers)
    ok = worst <= 1
    result = {"benchmark": "playground_load", "requests": args.requests, "all_completed": len(answers) == args.requests,
              "images_correct": ok, "max_grey_level_difference": worst, "wall_seconds": round(wall, 1),
              "latency_seconds": {"min": round(latencies[0], 1), "median": round(latencies[len(latencies) // 2], 1),
                                  "max": round(latencies[-1], 1)},
              "per_request": f"{args.seeds} seeds x 2 models (base, erased), {args.steps} DDIM steps, "
                             "guidance 5, prompt " + repr(PROMPT),
              "artifact": relative_path(args.artifact), "artifact_sha256_16": folder_hash(args.artifact),
              "page": "erase-playground defaults: one model call at a time, queue max_size 64",
              "hardware": hardware(), "torch_threads": torch.get_num_threads(), "versions": versions()}
    Path(args.results_file).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results_file).write_text(json.dumps(result, indent=1))
    print(f"{args.requests} concurrent requests: all completed, images {'correct' if ok else 'WRONG'} (max "
          f"difference {worst} grey levels), {wall:.1f} s wall, latency median {result['latency_seconds']['median']} "
          f"s, max {result['latency_seconds']['max']} s; wrote {args.results_file}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
