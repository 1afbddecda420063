import random

import open_clip
import pytest
import torch
from transformers import CLIPTokenizer

from erase.concepts import MINICANVAS, UNLEARNCANVAS
from pipelines.tokenizer import MAX_LENGTH, build_clip_tokenizer

EXTRA = [
    "", " ", "a photo of Van Gogh style painting", "A DOG!!! on a SKATEBOARD?!", "don't stop -- believin'",
    "café déjà vu, naïve façade", "東京の夜景、ネオン", "a cat 🐱 and a dog 🐶", "mixed\twhitespace\n\nand   spaces",
    "numbers 1234567890 3.14159 1,000,000", "hashtags #art #style @artist", "quotes \"double\" and 'single'",
    "brackets (round) [square] {curly} <angle>", "emdash — endash – ellipsis …", "Ελληνικά και русский текст",
    "über straße groß", "a,b;c:d.e!f?g", "UPPER lower MiXeD", "tab\tand\u00a0nbsp", "Ελληνικά 🐱 ∑ ½ ™",
]


def _prompts(n: int = 300) -> list[str]:
    rng = random.Random(0)
    words = ("photo painting sketch of a the in style with dog cat tree house sunset neon "
             "watercolor, mosaic! fire? 日本 émigré ☃ 42 x-ray hi-fi co-op").split()
    prompts = list(EXTRA)
    prompts += [UNLEARNCANVAS.prompt(t, o) for t, o in zip(UNLEARNCANVAS.themes, UNLEARNCANVAS.objects * 3)]
    prompts += [MINICANVAS.prompt(t, o) for t in MINICANVAS.themes for o in MINICANVAS.objects[:3]]
    while len(prompts) < n:
        prompts.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 120))))  # long ones truncate
    return prompts


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return build_clip_tokenizer()


def test_ids_equal_open_clip_on_varied_prompts(tok):
    prompts = _prompts()
    ours = tok(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    theirs = open_clip.tokenize(prompts, context_length=MAX_LENGTH)
    assert ours.shape == theirs.shape == (len(prompts), 77)
    truncated = 0
    for i, prompt in enumerate(prompts):
        n = int((theirs[i] != 0).sum())  # open_clip pads with 0, Stable Diffusion with <|endoftext|>
        assert torch.equal(ours[i, :n], theirs[i, :n]), prompt
        assert (ours[i, n:] == tok.pad_token_id).all()
        truncated += n == MAX_LENGTH
    assert truncated > 20  # the long prompts really were cut at 77, ending in <|endoftext|>
    assert (ours[:, -1][theirs[:, -1] != 0] == tok.eos_token_id).all()


def test_padding_and_special_tokens_match_stable_diffusion(tok):
    ids = tok(["a photo of Van Gogh style painting"], padding="max_length", max_length=77).input_ids[0]
    assert ids[:9] == [49406, 320, 1125, 539, 2451, 19697, 1844, 3086, 49407]
    assert ids[9:] == [49407] * 68
    assert tok.model_max_length == 77 and tok.pad_token == "<|endoftext|>" and len(tok) == 49408


def test_save_and_reload_gives_the_same_ids(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tokenizer")
    again = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    prompts = _prompts(60)
    assert tok(prompts, padding="max_length", truncation=True).input_ids == \
        again(prompts, padding="max_length", truncation=True).input_ids


def test_only_ftfy_text_repairs_differ(tok):
    """open_clip runs ftfy + html.unescape before BPE; Stable Diffusion's own (fast) CLIPTokenizer
    does not, and neither do we. After the same repair the ids agree again."""
    import html

    import ftfy

    repaired = ["\ufb01 ligature \ufb02", "\u201ccurly\u201d \u2018quotes\u2019", "\uff46\uff55\uff4c\uff4c width",
                "AT&amp;T &lt;3", "caf\u00c3\u00a9 mojibake"]
    for prompt in repaired:
        theirs = open_clip.tokenize([prompt])[0]
        theirs = theirs[theirs != 0].tolist()
        assert tok(prompt).input_ids != theirs
        assert tok(html.unescape(html.unescape(ftfy.fix_text(prompt)))).input_ids == theirs
