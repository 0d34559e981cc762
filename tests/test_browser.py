"""The wizard in a real headless Chromium (Debian's, driven by Python playwright): click through
all six steps on the embedded default, train, and save a screenshot of each step under
test-artifacts/screenshots/ (the README shows copies of them)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts" / "screenshots"


def has(text: str) -> re.Pattern:
    """A textarea's value contains ``text`` (to_contain_text reads text content, not values)."""
    return re.compile(re.escape(text))


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("LORAFORGE_SKIP_BROWSER") == "1":
            pytest.skip("no chromium and LORAFORGE_SKIP_BROWSER=1")
        pytest.fail("the browser tests need Debian's chromium (apt install chromium); tests/run.sh "
                    "installs it, or set LORAFORGE_SKIP_BROWSER=1 to skip them")
    return found


@pytest.fixture()
def app_url(tmp_path, monkeypatch):
    from webapp.server import build_app, find_free_port

    monkeypatch.setenv("LORAFORGE_OUTPUT", str(tmp_path / "out"))
    app = build_app(tier=("cpu", "test machine"))
    port = find_free_port("127.0.0.1", 7980)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(tmp_path / "out")])
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_click_through_the_wizard(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(app_url)

        def tab(name: str) -> None:
            page.get_by_role("tab", name=name).click()

        def shot(n: int, name: str) -> None:
            page.screenshot(path=str(ARTIFACTS / f"step{n}-{name}.png"), full_page=True)

        # 1. base model
        tab("1 Base model")
        page.locator("#detect-base").click()
        expect(page.locator("#base-kind textarea")).to_have_value("shapes-base: Stable Diffusion 1.x "
                                                                  "(diffusers folder)", timeout=30_000)
        shot(1, "base-model")
        # 2. dataset: the demo dataset is preselected
        tab("2 Dataset")
        page.locator("#check-dataset").click()
        expect(page.locator("#dataset-report textarea")).to_have_value(has("12 images, 120 per epoch"))
        expect(page.locator("#dataset-gallery img").first).to_be_visible()
        shot(2, "dataset")
        # 3. settings: one epoch, so the test stays short; the arithmetic follows the fields
        tab("3 Method")
        page.locator("#f-epochs input").fill("1")
        page.locator("#f-epochs input").press("Tab")
        expect(page.locator("#steps-arithmetic")).to_contain_text("= 30 steps")
        page.locator("#build-job").click()
        expect(page.locator("#job-check textarea")).to_have_value(
            "ready: lora on shapes-base (sd15), 12 images, 1 epochs", timeout=30_000)
        shot(3, "method")
        # 4. train: progress, loss plot, a sample image
        tab("4 Train")
        page.locator("#start").click()
        expect(page.locator("#message textarea")).to_have_value("started")
        expect(page.locator("#progress textarea")).to_have_value(has("done: step 30/30"), timeout=300_000)
        expect(page.locator("#samples img").first).to_be_visible(timeout=30_000)
        shot(4, "train")
        # 5. compare: a grid of the run's file at weights 0 and 1, pick a cell, keep it
        tab("5 Compare")
        page.locator("#use-run-files").click()
        expect(page.locator("#grid-files textarea")).to_have_value(has("zkz_star.safetensors"))
        page.locator("#grid-weights textarea, #grid-weights input").first.fill("0, 0.5, 1")
        page.locator("#make-grid").click()
        expect(page.locator("#grid-message textarea")).to_have_value(has("saved 1 grid(s) and 3 cells"),
                                                                          timeout=120_000)
        page.locator("#grid-cells img").nth(2).click()
        expect(page.locator("#pick-message textarea")).to_have_value(has("at weight 1"))
        page.keyboard.press("Escape")  # close the gallery's preview
        page.locator("#pick-name textarea, #pick-name input").first.fill("zkz_best")
        page.locator("#keep-pick").click()
        expect(page.locator("#picked textarea")).to_have_value(has("zkz_best.safetensors"))
        shot(5, "compare")
        # 6. export: the model card
        tab("6 Export")
        expect(page.locator("#export-model textarea")).to_have_value(has("zkz_best.safetensors"))
        page.locator("#write-card").click()
        expect(page.locator("#export-message textarea")).to_have_value(has("card written"), timeout=120_000)
        shot(6, "export")
        browser.close()
    out = tmp_path / "out"
    assert (out / "export" / "zkz_best" / "zkz_best.json").is_file()
    assert sorted(q.name for q in ARTIFACTS.glob("step*.png"))[:6] == [
        "step1-base-model.png", "step2-dataset.png", "step3-method.png", "step4-train.png",
        "step5-compare.png", "step6-export.png"]
