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


def before_folder(message: str) -> str:
    """The fixed start of a message whose folder (given as NUL) we do not know."""
    return message.split("\0")[0].strip()


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
    """Both languages on one server, as `launcher.py` serves them."""
    from engine.hardware import HardwareInfo, pick_tier
    from webapp.server import build_server, find_free_port, run_server

    monkeypatch.setenv("LORAFORGE_OUTPUT", str(tmp_path / "out"))
    port = find_free_port("127.0.0.1", 7980)
    server = run_server(build_server(tier=pick_tier(HardwareInfo())), "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True


@pytest.mark.parametrize("lang, locale", [("en", "en-US"), ("zh", "zh-CN")])
def test_click_through_the_wizard(app_url, tmp_path, lang, locale):
    """The browser's language picks the page (/ redirects); then all six steps, one screenshot
    each, under test-artifacts/screenshots/<lang>/."""
    from playwright.sync_api import expect, sync_playwright

    from engine.i18n import LANGUAGES, Translator

    t = Translator(lang)
    shots = ARTIFACTS / lang
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, locale=locale)
        page.goto(app_url)
        assert page.url == f"{app_url}{lang}/"

        def tab(key: str) -> None:
            page.get_by_role("tab", name=t(f"app.{key}")).click()

        def shot(n: int, name: str) -> None:
            page.screenshot(path=str(shots / f"step{n}-{name}.png"), full_page=True)

        # 1. base model
        tab("tab_base")
        page.locator("#detect-base").click()
        expect(page.locator("#base-kind textarea")).to_have_value(
            f"shapes-base: {t('base.family_sd15')} ({t('base.kind_diffusers')})", timeout=30_000)
        shot(1, "base-model")
        # 2. dataset: the demo dataset is preselected
        tab("tab_dataset")
        page.locator("#check-dataset").click()
        expect(page.locator("#dataset-report textarea")).to_have_value(
            has(t("dataset.summary", images=12, per_epoch=120)))
        expect(page.locator("#dataset-gallery img").first).to_be_visible()
        shot(2, "dataset")
        # 3. settings: one epoch, so the test stays short; the arithmetic follows the fields
        tab("tab_method")
        page.locator("#f-epochs input").fill("1")
        page.locator("#f-epochs input").press("Tab")
        expect(page.locator("#steps-arithmetic")).to_contain_text(
            t("method.steps", per_epoch=120, epochs=1, batch=4, steps=30, per=30))
        page.locator("#build-job").click()
        expect(page.locator("#job-check textarea")).to_have_value(t(
            "method.ready", method="lora", base="shapes-base", family="sd15", images=12, epochs=1),
            timeout=30_000)
        shot(3, "method")
        # 4. train: progress, loss plot, a sample image
        tab("tab_train")
        page.locator("#start").click()
        expect(page.locator("#message textarea")).to_have_value(t("train.started"))
        expect(page.locator("#progress textarea")).to_have_value(
            has(t("train.status", status=t("train.status_done"), step=30, total=30, epoch=1, eta="")),
            timeout=300_000)
        expect(page.locator("#samples img").first).to_be_visible(timeout=30_000)
        shot(4, "train")
        # 5. compare: a grid of the run's file at three weights, pick a cell, keep it
        tab("tab_compare")
        page.locator("#use-run-files").click()
        expect(page.locator("#grid-files textarea")).to_have_value(has("zkz_star.safetensors"))
        page.locator("#grid-weights textarea, #grid-weights input").first.fill("0, 0.5, 1")
        page.locator("#make-grid").click()
        expect(page.locator("#grid-message textarea")).to_have_value(
            has(before_folder(t("compare.saved", grids=1, cells=3, folder="\0"))), timeout=120_000)
        page.locator("#grid-cells img").nth(2).click()
        expect(page.locator("#pick-message textarea")).to_have_value(
            has(t("compare.chosen", name="zkz_star.safetensors", weight="1")))
        page.keyboard.press("Escape")  # close the gallery's preview
        page.locator("#pick-name textarea, #pick-name input").first.fill("zkz_best")
        page.locator("#keep-pick").click()
        expect(page.locator("#picked textarea")).to_have_value(has("zkz_best.safetensors"))
        shot(5, "compare")
        # 6. export: the model card
        tab("tab_export")
        expect(page.locator("#export-model textarea")).to_have_value(has("zkz_best.safetensors"))
        page.locator("#write-card").click()
        expect(page.locator("#export-message textarea")).to_have_value(
            has(before_folder(t("export.written", folder="\0", files=0, samples=0))), timeout=120_000)
        shot(6, "export")
        # the language switch leads to the other language's page
        other = next(code for code in ("en", "zh") if code != lang)
        page.get_by_role("link", name=LANGUAGES[other]).click()
        expect(page).to_have_url(f"{app_url}{other}/")
        browser.close()
    out = tmp_path / "out"
    assert (out / "export" / "zkz_best" / "zkz_best.json").is_file()
    assert sorted(q.name for q in shots.glob("step*.png")) == [
        "step1-base-model.png", "step2-dataset.png", "step3-method.png", "step4-train.png",
        "step5-compare.png", "step6-export.png"]
