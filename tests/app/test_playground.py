import json
import socket
from pathlib import Path

import numpy as np

import pytest
from PIL import Image

from app.engine import Bounds, Playground
from app.playground import build_app, build_parser, example_prompts, grid_view, leaderboard_view, main
from erase.artifacts import ArtifactError
from erase.provenance import module_sha256

PROMPT = "A Fish image in Candy style."


def test_base_named_in_erase_json_is_loaded_and_the_app_listens_on_localhost(tiny_pipe, artifact):
    import gradio as gr

    playground = Playground(None, [artifact[0]])  # base loaded from the folder named in erase.json
    assert module_sha256(playground.base.unet) == module_sha256(tiny_pipe.unet)
    assert playground.base is not tiny_pipe
    demo = build_app(playground)
    assert isinstance(demo, gr.Blocks)
    args = build_parser().parse_args(["--artifact", "x"])
    assert args.host == "127.0.0.1" and args.attack_seconds == 30 and args.max_queue == 64


def test_the_grid_view_puts_every_image_and_verdict_on_the_page(tiny_pipe, artifact):
    playground = Playground(None, [artifact[0]], base=tiny_pipe)
    items, table = grid_view(playground.grid(PROMPT, 7, 2, 2, 5.0))
    assert len(items) == 4 and all(image.width >= 256 for image, _ in items)  # 2 rows x 2 seeds, enlarged
    assert items[0][1].startswith("base (no erasure), seed 7: ") and "Candy" in items[2][1]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and rows[0] == "| model | seed 7 | seed 8 |" and "(base " in rows[2]


def test_the_leaderboard_tab_shows_the_merge_of_the_results_named_at_launch(tiny_eval):
    table, plot = leaderboard_view([str(tiny_eval.out)])
    assert "| base |" in table and "St. CLIP rm." in table and plot.width > 100
    text, none = leaderboard_view([])
    assert "--results" in text and none is None


def _free_port() -> str:
    """A port nothing listens on now, so that these tests do not depend on 7860 being free on the machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_artifacts_give_one_line_errors(tmp_path, capsys):
    assert main(["--artifact", str(tmp_path / "missing"), "--port", _free_port()]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and len(err.splitlines()) == 1
    with pytest.raises(ArtifactError):
        Playground(None, [])


def test_a_port_out_of_range_or_taken_is_one_line_before_any_model_loads(tmp_path, capsys):
    missing = str(tmp_path / "missing")  # the port is checked first: no artifact is read, no model loaded
    assert main(["--artifact", missing, "--port", "99999"]) == 2
    assert "--port must be between 1 and 65535" in _one_error_line(capsys)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--artifact", missing, "--port", str(port)]) == 2
    assert f"127.0.0.1:{port}: already in use" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_erase_json_without_a_component_format_is_one_line(artifact, capsys):
    folder = artifact[0]
    record = json.loads((folder / "erase.json").read_text())
    del record["components"]["unet"]["format"]
    (folder / "erase.json").write_text(json.dumps(record))
    assert main(["--artifact", str(folder), "--port", _free_port()]) == 2
    assert "component 'unet' lacks key 'format'" in _one_error_line(capsys)


def test_a_bad_results_file_or_budget_is_one_line_before_any_model_loads(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{}")
    missing = str(tmp_path / "missing")
    assert main(["--artifact", missing, "--port", _free_port(), "--results", str(tmp_path / "bad.json")]) == 2
    assert "is not an unlearncanvas-eval results.json" in _one_error_line(capsys)
    assert main(["--artifact", missing, "--port", _free_port(), "--attack-seconds", "100000"]) == 2
    assert "--attack-seconds must be 1 .. 600" in _one_error_line(capsys)


def test_an_artifact_of_another_base_is_refused(artifact, embedded_pipe):
    with pytest.raises(ArtifactError, match="differs from the one"):
        Playground(None, [artifact[0]], base=embedded_pipe)


def test_example_prompts_name_the_concept_and_a_retained_one():
    style = example_prompts("Candy", "style")
    assert "Candy" in style[0] and all("Candy" not in p for p in style[2:])
    obj = example_prompts("fish", "object")
    assert "Fish" in obj[0] and "Fish" not in obj[-1]
    assert example_prompts("Van Gogh", "style")[0] == "A Architectures image in Van Gogh style."
    assert example_prompts("teapot", "object")[0] == "A photo of teapot."


@pytest.fixture
def served(tiny_pipe, artifact, tiny_eval):
    """The page on a free local port (the tiny model, its artifact, the tiny evaluation as the leaderboard).

    ``ERASE_PLAYGROUND_ARTIFACT=DIR``: an artifact of the embedded model instead (its preset sampler), for
    the README's screenshot of a real erasure.
    """
    import os

    real = os.environ.get("ERASE_PLAYGROUND_ARTIFACT")
    # the attack on the tiny model stops at a 3 s budget (the page shows what it found by then); the budget's
    # own stop is tested in test_engine.py
    playground = (Playground(None, [real]) if real
                  else Playground(None, [artifact[0]], base=tiny_pipe, bounds=Bounds(attack_seconds=3)))
    demo = build_app(playground, default_steps=25 if real else 2, default_guidance=5.0,
                     results=[str(tiny_eval.out)])
    port = int(_free_port())
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield playground, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_the_api_bounds_absurd_inputs_and_keeps_serving_concurrent_requests(served):
    from gradio_client import Client

    playground, url = served
    client = Client(url, verbose=False)
    # a 100,000-character prompt, seed -1 and seed 2^70: drawn, with a notice saying what was used
    gallery, table = client.predict("word " * 20_000, -1, 1, 2, 5.0, api_name="/grid")
    assert len(gallery) == 2 and "prompt cut to 2,000" in table and "seed -1 out of range, used 0" in table
    gallery, table = client.predict(PROMPT, 2 ** 70, 1, 2, 5.0, api_name="/grid")
    assert "seed 1180591620717411303424 out of range" in table
    with pytest.raises(Exception, match="greater than maximum value"):  # 10,000 steps: refused by the page's bounds
        client.predict(PROMPT, 1, 1, 10_000, 5.0, api_name="/grid")

    # concurrent requests (submitted together, not one after another) wait in the queue; each gets its own
    # seed's images
    jobs = {seed: client.submit(PROMPT, seed, 1, 2, 5.0, api_name="/grid") for seed in (11, 12, 13, 14)}
    for seed, job in jobs.items():
        gallery = job.result(timeout=120)[0]
        want = playground.grid(PROMPT, seed, 1, 2, 5.0)
        for item, row in zip(gallery, want.rows):
            shown = np.asarray(Image.open(item["image"]).convert("RGB"))
            scale = shown.shape[0] // want.images[row][0].shape[0]
            assert np.abs(shown[::scale, ::scale].astype(int) - want.images[row][0].astype(int)).max() <= 1


def _browser():
    """A headless Chromium driven by selenium, or the one-line reason there is none."""
    import shutil

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("no browser test: selenium is not installed (pip install selenium)")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no browser test: Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,2300"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.browser
def test_the_page_in_a_real_browser(served, tmp_path):
    """Load, generate, read every image and verdict, attack, open the leaderboard, save a screenshot
    (``ERASE_SCREENSHOT=docs/playground.png`` writes the README's picture)."""
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    _, url = served
    browser = _browser()
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 120, poll_frequency=0.1)
        wait.until(ready.element_to_be_clickable((By.ID, "generate"))).click()
        # 2 models x 4 seeds: eight images in the gallery, a verdict table with the base and the erased row
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#grid img")) >= 8)
        wait.until(lambda b: "(base " in b.find_element(By.ID, "verdicts").text)
        table = browser.find_element(By.ID, "verdicts").text
        assert "base (no erasure)" in table and "esd: Candy" in table and table.count("Candy") >= 8
        browser.find_element(By.ID, "attack").click()
        wait.until(lambda b: "adversarial tokens" in b.find_element(By.ID, "attack-result").text)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#attack-images img")) >= 3)
        browser.find_element(By.ID, "use-adversarial").click()
        shot = Path(os.environ.get("ERASE_SCREENSHOT") or tmp_path / "playground.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        tab = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role='tab']") if "Leaderboard" in b.text)
        tab.click()
        wait.until(lambda b: b.find_element(By.ID, "leaderboard").is_displayed()
                   and "St. UA" in b.find_element(By.ID, "leaderboard").text)
        assert "base" in browser.find_element(By.ID, "leaderboard").text
    finally:
        browser.quit()
