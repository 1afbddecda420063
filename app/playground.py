"""erase-playground: see, judge and attack an erasure in the browser.

One prompt, a few seeds: the base model's row and one row per erased model, every image with the
judges' verdicts (classifier top-1 per axis, CLIP's assignment, the erased concept's probability
beside the base's); an attack button that runs UnlearnDiffAtk on the prompt against the chosen
erased model within a time budget the page cannot raise; a leaderboard tab of the ``results.json``
files named at launch. The computing is in ``app.engine``; this module is the page and its command.

    erase-playground --artifact erased/esd-candy                  # http://127.0.0.1:7860
    erase-playground --artifact a --artifact b --results outputs/uc-*/results.json
    erase-playground --artifact a --host 0.0.0.0                  # listen beyond this machine only when told
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from app.engine import BASE, Bounds, Grid, Playground
from benchmarks.unlearncanvas.config import EvalConfig
from benchmarks.unlearncanvas.leaderboard import leaderboard_markdown, leaderboard_plot, leaderboard_rows, load_results
from benchmarks.unlearncanvas.protocol import SAMPLER_DEFAULTS
from erase.artifacts import ArtifactError
from erase.concepts import find_domain
from pipelines.stable_diffusion import EMBEDDED_MODEL_NAME, ModelLoadError
from pipelines.weights import CheckpointError

DISPLAY_SIZE = 256  # the embedded model draws 32 px; show it large enough to see, without smoothing


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


def _display(image: np.ndarray) -> Image.Image:
    pil = Image.fromarray(image)
    if pil.width < DISPLAY_SIZE:
        scale = -(-DISPLAY_SIZE // pil.width)
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    return pil


def grid_view(grid: Grid) -> tuple[list[tuple[Image.Image, str]], str]:
    """Gallery items (image, caption: model, seed, verdict) row by row, and the verdict table in Markdown."""
    items, lines = [], []
    seeds = " | ".join(f"seed {s}" for s in grid.seeds)
    lines += [f"| model | {seeds} |", "|---" * (len(grid.seeds) + 1) + "|"]
    base_verdicts = grid.verdicts.get(BASE)
    for label in grid.rows:
        verdicts = grid.verdicts.get(label)
        cells = []
        for j, (seed, image) in enumerate(zip(grid.seeds, grid.images[label])):
            verdict = verdicts[j].text(None if label == BASE else base_verdicts[j]) if verdicts else ""
            items.append((_display(image), f"{label}, seed {seed}: {verdict.replace('**', '')}"))
            cells.append(verdict)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    notices = "".join(f"\n\n**Note:** {n}" for n in grid.notices)
    return items, "\n".join(lines) + notices


def leaderboard_view(paths: Sequence[str]) -> tuple[str, Image.Image | None]:
    """The merge table and plot of the results named at launch (never paths from the browser)."""
    if not paths:
        return "No results given: start with `--results outputs/uc-*/results.json` to see the leaderboard here.", None
    results = load_results(paths, allow_subset=True)
    rows = leaderboard_rows(results)
    return leaderboard_markdown(rows, results), leaderboard_plot(rows)


def build_app(playground: Playground, default_steps: int = 25, default_guidance: float = 5.0,
              results: Sequence[str] = (), max_queue: int = 64):
    """The Gradio page; returned unlaunched (with its queue set) so tests and notebooks can use it."""
    import gradio as gr

    labels = list(playground.erased)
    first = playground.metadata[labels[0]]
    examples = example_prompts(first.concept, first.kind)
    bounds = playground.bounds
    board_md, board_plot = leaderboard_view(results)

    def run_grid(prompt, seed, count, steps, guidance):
        try:
            grid = playground.grid(prompt, seed, count, steps, guidance)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        return grid_view(grid)

    def run_attack(prompt, label, seed, steps, guidance, progress=gr.Progress()):
        try:
            res = playground.attack(prompt, label, seed, steps, guidance,
                                    progress=lambda done, text: progress(done, desc=text))
        except ValueError as err:
            raise gr.Error(str(err)) from None
        verdict = "**the concept is back**" if res.success_after and not res.success_before else (
            "the erased model drew it without the attack" if res.success_before else "the attack failed")
        items = [(_display(res.images[k]), f"{k}: {res.verdicts[k].text().replace('**', '')}")
                 for k in ("base", "erased", "attacked")]
        text = (f"{verdict} ({res.seconds:.0f} s of a {bounds.attack_seconds:.0f} s budget; seed {res.seed})\n\n"
                f"adversarial tokens: ids `{res.token_ids}`, text `{res.tokens_text}`\n\n"
                f"adversarial prompt: `{res.adversarial_prompt}` (the ids are what the attack found: the text, "
                f"typed again, may tokenize otherwise)")
        return items, text, res.adversarial_prompt

    with gr.Blocks(title="erase playground") as demo:
        gr.Markdown("## erase playground\nOne prompt, the same seeds through the base model and every erased "
                    "model; the judges' verdicts under each image; an attack that tries to bring the concept back."
                    + (f"\n\n*{playground.judge_note}*" if playground.judge_note else ""))
        with gr.Tab("Compare and attack"):
            prompt = gr.Textbox(label="Prompt", value=examples[0], max_lines=3, elem_id="prompt")
            with gr.Row():
                seed = gr.Number(value=188, precision=0, label="First seed")
                count = gr.Slider(1, bounds.max_seeds, value=min(4, bounds.max_seeds), step=1, label="Seeds")
                steps = gr.Slider(1, bounds.max_steps, value=min(default_steps, bounds.max_steps), step=1,
                                  label="DDIM steps")
                guidance = gr.Slider(bounds.min_guidance, bounds.max_guidance, value=default_guidance, step=0.5,
                                     label="Guidance scale")
            generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
            gallery = gr.Gallery(label="Rows: base, then each erased model; columns: seeds", columns=4,
                                 elem_id="grid", object_fit="contain", format="png")
            table = gr.Markdown(elem_id="verdicts")
            gr.Examples(examples=[[p] for p in examples], inputs=[prompt])
            gr.Markdown(f"### Attack\nUnlearnDiffAtk on this prompt and the first seed against one erased model, "
                        f"at most {bounds.attack_seconds:.0f} s (set at launch).")
            with gr.Row():
                label = gr.Dropdown(choices=labels, value=labels[0], label="Erased model to attack")
                attack_button = gr.Button("Attack", elem_id="attack")
                use_button = gr.Button("Use the adversarial prompt", elem_id="use-adversarial")
            attack_gallery = gr.Gallery(label="base | erased | attacked", columns=3, elem_id="attack-images",
                                        format="png")
            attack_text = gr.Markdown(elem_id="attack-result")
            adversarial = gr.State("")
        with gr.Tab("Leaderboard", elem_id="leaderboard-tab"):
            gr.Markdown(board_md, elem_id="leaderboard")
            if board_plot is not None:
                gr.Image(board_plot, label="UA / IRA / CRA, CLIP removal and ASR per method", type="pil")
        grid_inputs = [prompt, seed, count, steps, guidance]
        # one model call at a time (the models share weights and the CPU); the rest wait in the queue
        generate_button.click(run_grid, grid_inputs, [gallery, table], concurrency_limit=1,
                              concurrency_id="models", api_name="grid")
        prompt.submit(run_grid, grid_inputs, [gallery, table], concurrency_limit=1, concurrency_id="models",
                      api_name=False)
        attack_button.click(run_attack, [prompt, label, seed, steps, guidance],
                            [attack_gallery, attack_text, adversarial], concurrency_limit=1,
                            concurrency_id="models", api_name="attack")
        use_button.click(lambda text, current: text or current, [adversarial, prompt], [prompt])
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    return demo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="erase-playground", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", action="append", default=[], required=True,
                   help="an erase-concept output folder; repeat to compare several")
    p.add_argument("--model", help="base model (default: the one named in the first artifact's erase.json)")
    p.add_argument("--device", help="e.g. cuda; default cpu")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="1 .. 65535, free (default 7860)")
    p.add_argument("--results", nargs="+", default=[], help="results.json files or folders for the leaderboard tab")
    p.add_argument("--attack-seconds", type=float, default=Bounds.attack_seconds,
                   help=f"time budget of one attack (default {Bounds.attack_seconds:g}; 1 .. 600)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting at most (default 64)")
    g = p.add_argument_group("judges (as unlearncanvas-eval; default: the shipped MiniCanvas ones)")
    g.add_argument("--style-classifier", help="UnlearnCanvas style50.pth")
    g.add_argument("--object-classifier", help="UnlearnCanvas style50_cls.pth")
    g.add_argument("--clip-model", help="open_clip architecture, e.g. ViT-L-14")
    g.add_argument("--clip-pretrained", help="open_clip pretrained tag or weights file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_port(args.host, args.port)
        if not 1 <= args.attack_seconds <= 600 or not 1 <= args.max_queue <= 10_000:
            raise ValueError("--attack-seconds must be 1 .. 600 and --max-queue 1 .. 10000")
        leaderboard_view(args.results)  # a bad results file fails here, with one line, before any model loads
        judges = None
        if args.style_classifier or args.object_classifier or args.clip_model:
            judges = EvalConfig(domain="unlearncanvas", style_classifier=args.style_classifier,
                                object_classifier=args.object_classifier, clip_model=args.clip_model,
                                clip_pretrained=args.clip_pretrained, use_clip=bool(args.clip_model), use_fid=False)
        playground = Playground(args.model, args.artifact, args.device, judges=judges,
                                bounds=Bounds(attack_seconds=args.attack_seconds))
    except (ArtifactError, ModelLoadError, PortError, CheckpointError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    embedded = all(r.base_model.get("id") == EMBEDDED_MODEL_NAME for r in playground.metadata.values())
    steps, guidance = SAMPLER_DEFAULTS["minicanvas" if embedded else "unlearncanvas"]
    if torch.cuda.is_available() and args.device is None:
        print("note: running on the CPU; pass --device cuda to use the GPU", file=sys.stderr)
    try:
        build_app(playground, steps, guidance, args.results, args.max_queue).launch(
            server_name=args.host, server_port=args.port, share=False)
    except OSError as err:  # the port was taken between the check and the launch
        print(f"error: cannot listen on {args.host}:{args.port}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
