"""Offline CLIP tokenizer built from the BPE vocabulary that open_clip_torch ships.

The result is an ordinary transformers ``CLIPTokenizer`` (Stable Diffusion's tokenizer class):
same vocabulary, merges and ids as ``open_clip.tokenize``, padded with ``<|endoftext|>`` to 77
as Stable Diffusion pads. Like Stable Diffusion's own tokenizer it does not run ftfy, so text
that ftfy would repair (ligatures, full-width letters, curly quotes, HTML entities, mojibake)
tokenizes differently from open_clip; ``tests/pipelines/test_tokenizer.py`` pins exactly that.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MAX_LENGTH = 77


def _vocab_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip_torch is not installed; it ships the CLIP BPE vocabulary")
    return Path(list(spec.submodule_search_locations)[0]) / VOCAB_FILE


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_clip_tokenizer() -> CLIPTokenizer:
    """The CLIP ViT-L/14 text tokenizer (49,408 tokens), built without network access."""
    lines = gzip.open(_vocab_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
