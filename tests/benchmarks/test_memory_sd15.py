"""benchmarks/memory_sd15.py: the per-image arithmetic, the JSON schema the README table is read from (the
committed file, not a rerun of the measurement) and the shared SD 1.5 shapes."""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from benchmarks.memory_sd15 import RESULTS_FILE, SCHEMA, per_image
from benchmarks.memory_table import GPUS_GIB, markdown_table
from benchmarks.sd15_shapes import UNET_PARAMETERS, UNET_SD15, VAE_PARAMETERS, VAE_SD15

README = Path(__file__).resolve().parents[2] / "README.md"
GIB = 2**30


def _row(phase, px, batch, working, trained=None):
    return {"phase": phase, "trained": trained, "gradient_checkpointing": False, "pixels": px, "batch": batch,
            "working_bytes": working}


def test_the_per_image_term_is_the_slope_in_batch_and_the_intercept_cancels():
    rows = [_row("decode", 256, 1, 3 * GIB), _row("decode", 256, 2, 4 * GIB), _row("decode", 512, 1, 6 * GIB),
            _row("decode", 512, 2, 10 * GIB)]
    got = per_image(rows)["decode"]
    assert got["per_image_256_bytes"] == GIB and got["intercept_256_bytes"] == 2 * GIB
    assert got["per_image_512_bytes"] == 4 * GIB and got["area_ratio_512_over_256"] == 4.0
    skipped = per_image(rows[:3])["decode"]  # no batch 2 at 512 px: batch 1 minus the 256 px intercept
    assert skipped["per_image_512_bytes"] == 4 * GIB and "intercept" in skipped["per_image_512_from"]


def test_the_committed_json_has_what_the_readme_table_reads():
    data = json.loads(RESULTS_FILE.read_text())
    assert data["schema"] == SCHEMA and data["dtype"] == "float32" and data["threads"] >= 1
    for key in ("hardware", "versions", "shapes", "how", "gpu_model", "rows", "per_image", "table", "command"):
        assert data[key], key
    for row in data["rows"]:
        assert "skipped" in row or row["working_bytes"] == row["peak_bytes"] - row["before_bytes"]
    for r in data["table"]:
        assert {"run", "precision", "fixed_gib", "per_image_gib", "default_batch", "default_peak_gib"} <= set(r)
        assert set(r["gpus"]) == {str(t) for t in GPUS_GIB}
    readme = README.read_text()
    for line in markdown_table(data["table"]).splitlines():  # the README shows the table the script wrote
        assert line in readme, line


def test_the_shared_shapes_are_stable_diffusion_1_5s():
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**UNET_SD15), AutoencoderKL(**VAE_SD15)
    assert sum(p.numel() for p in unet.parameters()) == UNET_PARAMETERS
    assert sum(p.numel() for p in vae.parameters()) == VAE_PARAMETERS
