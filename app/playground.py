"""erase-playground: type a prompt, see the base model and an erased model side by side.

The base pipeline is loaded once; each erased artifact gets its own copy of only the
components it changed (``erase.loading.erased_copy``: strict and hash-checked), the rest
is shared, so comparing a Stable Diffusion 1.5 erasure costs one extra UNet, not a second
pipeline. Both images of a pair come from the same seed, so every difference is the erasure.

    erase-playground --artifact erased/esd-candy                  # http://127.0.0.1:7860
    erase-playground --artifact a --artifact b --host 0.0.0.0     # listen beyond this machine only when told
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from benchmarks.unlearncanvas.protocol import SAMPLER_DEFAULTS
from erase.artifacts import ArtifactError, EraseRecord, read_record
from erase.concepts import find_domain
from erase.loading import base_id, erased_copy
from pipelines.stable_diffusion import EMBEDDED_MODEL_NAME, ModelLoadError, generate, load_pipeline

DISPLAY_SIZE = 256  # the embedded model draws 32 px; show it large enough to see, without smoothing
MAX_STEPS = 200


class PortError(ValueError):
    """The address to listen on is out of range, unknown or taken; the message is one line."""


def check_port(host: str, port: int) -> None:
    """Refuse a port out of range or already in use on ``host`` before any model loads or gradio starts.

    Binds and releases a socket the way the server will (``SO_REUSEADDR``, so a port that only holds
    connections in TIME_WAIT is not refused); another program listening there makes the bind fail.
    """
    if not 1 <= port <= 65535:
        raise PortError(f"--port must be between 1 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise PortError(f"cannot listen on --host {host!r}: {getattr(err, 'strerror', None) or err}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            reason = "already in use" if err.errno == errno.EADDRINUSE else err.strerror
            raise PortError(f"cannot listen on {host}:{port}: {reason}") from None


def example_prompts(concept: str, kind: str) -> list[str]:
    """Prompts that name the erased concept and prompts that should be untouched, in the domain's template."""
    domain = find_domain(concept)
    if domain is None:
        return [f"A painting in {concept} style." if kind == "style" else f"A photo of {concept}.",
                "A photo of a house by a lake."]
    name = domain.canonical(concept)
    if kind == "style":
        others = [t for t in domain.themes if t not in (name, domain.photo_theme)]
        keep, obj = others[0], domain.objects[0]
        return [domain.prompt(name, obj), domain.prompt(name, domain.objects[-1]), domain.prompt(keep, obj)]
    others = [o for o in domain.objects if o != name]
    style = next(t for t in domain.themes if t != domain.photo_theme)
    return [domain.prompt(style, name), domain.prompt(domain.photo_theme, name), domain.prompt(style, others[0])]


class Playground:
    """A base pipeline and the erased pipelines built on it, keyed by a label per artifact."""

    def __init__(self, model: str | None, artifacts: Sequence[str | Path], device: str | None = None,
                 base: StableDiffusionPipeline | None = None):
        """``base``: an already loaded base pipeline to build on (it is shared, never changed)."""
        if not artifacts:
            raise ArtifactError("give at least one --artifact folder made by erase-concept")
        records = [read_record(a) for a in artifacts]
        # the base the first artifact was made from, unless named
        self.base = base if base is not None else load_pipeline(base_id(records[0], model))
        self.erased: dict[str, StableDiffusionPipeline] = {}
        self.metadata: dict[str, EraseRecord] = {}
        for folder, record in zip(artifacts, records):
            label = f"{record.method}: {record.concept} ({Path(folder).name})"
            self.erased[label] = erased_copy(self.base, folder)  # ArtifactError when a component is missing or differs
            self.metadata[label] = record
        if device is not None:
            for pipe in (self.base, *self.erased.values()):
                pipe.to(device)

    def compare(self, prompt: str, label: str, seed: int, steps: int, guidance: float
                ) -> tuple[Image.Image, Image.Image, str]:
        """(original, erased, caption) for one prompt, both drawn from the same seed."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise ValueError("type a prompt first")
        if label not in self.erased:
            raise ValueError(f"unknown erased model {label!r}")
        steps = int(steps)
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}")
        seed = int(seed)
        images = [generate(pipe, [prompt], [seed], steps=steps, guidance_scale=float(guidance), batch_size=1)[0]
                  for pipe in (self.base, self.erased[label])]
        record = self.metadata[label]
        caption = (f"seed {seed}, {steps} DDIM steps, guidance {guidance:g}; erased: {record.method} on "
                   f"{record.concept!r} ({record.kind}), base {record.base_model.get('id')}")
        return _display(images[0]), _display(images[1]), caption


def _display(image: np.ndarray) -> Image.Image:
    pil = Image.fromarray(image)
    if pil.width < DISPLAY_SIZE:
        scale = -(-DISPLAY_SIZE // pil.width)
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    return pil


def build_app(playground: Playground, default_steps: int = 25, default_guidance: float = 5.0):
    """The Gradio page; returned unlaunched so tests and notebooks can use it."""
    import gradio as gr

    labels = list(playground.erased)
    first = playground.metadata[labels[0]]
    examples = example_prompts(first.concept, first.kind)

    def run(prompt, label, seed, steps, guidance):
        try:
            return playground.compare(prompt, label, seed, steps, guidance)
        except ValueError as err:
            raise gr.Error(str(err)) from None

    with gr.Blocks(title="erase playground") as demo:
        gr.Markdown("## erase playground\nThe same prompt and seed through the base model and an erased one.")
        prompt = gr.Textbox(label="Prompt", value=examples[0])
        with gr.Row():
            label = gr.Dropdown(choices=labels, value=labels[0], label="Erased model")
            seed = gr.Number(value=188, precision=0, label="Seed")
            steps = gr.Slider(1, MAX_STEPS, value=default_steps, step=1, label="DDIM steps")
            guidance = gr.Slider(1.0, 15.0, value=default_guidance, step=0.5, label="Guidance scale")
        button = gr.Button("Generate", variant="primary")
        with gr.Row():
            original = gr.Image(label="Original", type="pil")
            erased = gr.Image(label="Erased", type="pil")
        caption = gr.Markdown()
        gr.Examples(examples=[[p] for p in examples], inputs=[prompt])
        inputs, outputs = [prompt, label, seed, steps, guidance], [original, erased, caption]
        button.click(run, inputs, outputs, concurrency_limit=1)
        prompt.submit(run, inputs, outputs, concurrency_limit=1)
    return demo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="erase-playground", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", action="append", default=[], required=True,
                   help="an erase-concept output folder; repeat to compare several")
    p.add_argument("--model", help="base model (default: the one named in the first artifact's erase.json)")
    p.add_argument("--device", help="e.g. cuda; default cpu")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="1 .. 65535, free (default 7860)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_port(args.host, args.port)
        playground = Playground(args.model, args.artifact, args.device)
    except (ArtifactError, ModelLoadError, PortError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    embedded = all(r.base_model.get("id") == EMBEDDED_MODEL_NAME for r in playground.metadata.values())
    steps, guidance = SAMPLER_DEFAULTS["minicanvas" if embedded else "unlearncanvas"]
    if torch.cuda.is_available() and args.device is None:
        print("note: running on the CPU; pass --device cuda to use the GPU", file=sys.stderr)
    try:
        build_app(playground, steps, guidance).launch(server_name=args.host, server_port=args.port)
    except OSError as err:  # the port was taken between the check and the launch
        print(f"error: cannot listen on {args.host}:{args.port}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
