"""The wizard in a real headless Chromium (Debian's, driven by Python playwright): click through
all six steps on the embedded default, train, and save a screenshot of each step under
test-artifacts/screenshots/ (the README shows copies of them)."""
from __future__ import annotations

import json
import os
import re
import shutil

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


CONTRAST_JS = """el => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = c => { const [r, g, b] = c.slice(0, 3).map(v => { v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
      return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  let bg = el, back = [255, 255, 255, 1];
  while (bg) { const c = rgb(getComputedStyle(bg).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) { back = c; break; } bg = bg.parentElement; }
  const a = lum(rgb(getComputedStyle(el).color)), b = lum(back);
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}"""


def contrast(locator) -> float:
    """WCAG contrast ratio of an element's text against the first opaque background behind it."""
    return locator.evaluate(CONTRAST_JS)


@pytest.fixture()
def app_url(tmp_path, monkeypatch):
    """Both languages on one server, as `launcher.py` serves them."""
    from engine.system.hardware import HardwareInfo, pick_tier
    from webapp.server import build_server, find_free_port, run_server

    monkeypatch.setenv("LORAFORGE_OUTPUT", str(tmp_path / "out"))
    port = find_free_port("127.0.0.1", 7980)
    server = run_server(build_server(tier=pick_tier(HardwareInfo())), "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True


@pytest.mark.parametrize("lang, locale", [("en", "en-US"), ("zh", "zh-CN")])
def test_click_through_the_wizard_with_my_own_images(app_url, tmp_path, lang, locale):
    """What a newcomer does: the browser's language picks the page; they upload their OWN images
    (not the demo), click a thumbnail to read its caption, rename the output and change the
    epochs without any extra button, read what will train, train, compare, pick and export.
    The trained file's metadata must say those images, that name and that base. One screenshot
    per step under test-artifacts/screenshots/<lang>/."""
    from conftest import draw_shape_images
    from playwright.sync_api import expect, sync_playwright
    from safetensors import safe_open

    from engine.i18n import LANGUAGES, Translator

    t = Translator(lang)
    shots = ARTIFACTS / lang
    shots.mkdir(parents=True, exist_ok=True)
    mine = draw_shape_images(tmp_path / "my photos", 4, colour=(30, 160, 60), caption="a green disc")
    out = tmp_path / "out"
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

        def box(elem_id: str):
            return page.locator(f"#{elem_id} textarea, #{elem_id} input").first

        # 1. base model: the embedded one
        tab("tab_base")
        page.locator("#detect-base").click()
        expect(page.locator("#base-kind textarea")).to_have_value(
            f"shapes-base: {t('base.family_sd15')} ({t('base.kind_diffusers')})", timeout=30_000)
        shot(1, "base-model")
        # 2. dataset: upload my own 4 pictures (and their captions), import, click a thumbnail
        tab("tab_dataset")
        page.locator("#upload input[type=file]").set_input_files([str(q) for q in sorted(mine.iterdir())])
        box("concept-name").fill("green")
        page.locator("#repeats input").fill("2")
        page.locator("#import-dataset").click()
        expect(page.locator("#dataset-report textarea")).to_have_value(
            has(t("dataset.summary", images=4, per_epoch=8)), timeout=60_000)
        expect(page.locator("#dataset-path textarea, #dataset-path input").first).to_have_value(
            str(out / "datasets" / "green"))
        page.get_by_role("button", name=t("dataset.captions_title")).click()
        page.locator("#dataset-gallery img").nth(2).click()
        expect(box("caption-text")).to_have_value("a green disc")
        shot(2, "dataset")
        # 3. settings: a new name and one epoch, typed in; nothing else pressed
        tab("tab_method")
        help_text = page.get_by_text(t("field.output.name.why"), exact=False).first
        assert contrast(help_text) >= 4.5  # readable help (WCAG AA)
        box("f-output-name").fill("my_green")
        box("f-output-name").press("Tab")
        page.locator("#f-training-epochs input").fill("3")
        page.locator("#f-training-epochs input").press("Tab")
        expect(page.locator("#steps-arithmetic")).to_contain_text(
            t("method.steps", per_epoch=8, epochs=3, batch=4, steps=6, per=2), timeout=30_000)
        shot(3, "method")
        # 4. train: the summary says exactly what trains; progress, loss, a sample image
        tab("tab_train")
        summary = page.locator("#train-summary")
        expect(summary).to_contain_text(str(out / "datasets" / "green"))
        expect(summary).to_contain_text("my_green-")
        page.locator("#start").click()
        expect(page.locator("#start")).to_be_disabled(timeout=30_000)  # while the job runs
        expect(page.locator("#message textarea")).to_have_value(has(t("train.finished", file="\0").split("\0")[0]),
                                                                timeout=300_000)
        expect(page.locator("#progress-bar [role=progressbar]")).to_have_attribute("aria-valuenow", "100")
        expect(page.locator("#samples img").first).to_be_visible(timeout=30_000)
        expect(page.locator("#start")).to_be_enabled()
        shot(4, "train")
        # 5. compare: the run's files (read from disk), a grid at two weights, pick a cell, keep it
        tab("tab_compare")
        page.locator("#use-run-files").click()
        expect(page.locator("#grid-files textarea")).to_have_value(has("my_green.safetensors"), timeout=30_000)
        page.locator("#grid-files textarea").fill(page.locator("#grid-files textarea").input_value().splitlines()[-1])
        page.locator("#grid-weights textarea, #grid-weights input").first.fill("0, 1")
        page.locator("#make-grid").click()
        # two grids: the prompt, and the run's prompt without the trigger (bleed); figures per file
        expect(page.locator("#grid-message textarea")).to_have_value(
            has(before_folder(t("compare.saved", grids=2, cells=2, folder="\0"))), timeout=120_000)
        expect(page.locator("#grid-message textarea")).to_have_value(has(t("compare.summary")))
        page.locator("#grid-cells img").nth(1).click()
        expect(page.locator("#pick-message textarea")).to_have_value(
            has(t("compare.chosen", name="my_green.safetensors", weight="1")))
        page.keyboard.press("Escape")  # close the gallery's preview
        box("pick-name").fill("my_green_best")
        page.locator("#keep-pick").click()
        expect(page.locator("#picked textarea")).to_have_value(has("my_green_best.safetensors"))
        shot(5, "compare")
        # 6. export: the model card, with samples from the run's own base and settings
        tab("tab_export")
        expect(page.locator("#export-model textarea")).to_have_value(has("my_green_best.safetensors"))
        page.locator("#write-card").click()
        expect(page.locator("#export-message textarea")).to_have_value(
            has(before_folder(t("export.written", folder="\0", files=0, samples=0))), timeout=120_000)
        expect(page.locator("#card-zip a").first).to_be_visible()
        shot(6, "export")
        # the language switch leads to the other language's page; a favicon; a phone-width screen
        icon = page.request.get(f"{app_url}favicon.ico")
        assert icon.ok and icon.headers["content-type"] == "image/png"
        other = next(code for code in ("en", "zh") if code != lang)
        page.get_by_role("link", name=LANGUAGES[other]).click()
        expect(page).to_have_url(f"{app_url}{other}/")
        phone = browser.new_page(viewport={"width": 390, "height": 844}, locale=locale)
        phone.goto(f"{app_url}{lang}/")
        phone.get_by_role("button", name="More tabs").click()  # Gradio folds the tabs that do not fit
        phone.locator(".overflow-dropdown button", has_text=t("app.tab_export")).click()
        expect(phone.locator("#write-card")).to_be_visible()
        browser.close()
    (run,) = [q for q in (out / "runs").iterdir() if q.is_dir()]
    with safe_open(str(run / "my_green.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_output_name"] == "my_green" and meta["ss_sd_model_name"] == "shapes-base"
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_green": {"n_repeats": 2, "img_count": 4}}
    assert (out / "export" / "my_green_best" / "my_green_best.json").is_file()
    assert list((out / "export" / "my_green_best" / "samples").glob("*.png"))
    assert sorted(q.name for q in shots.glob("step*.png")) == [
        "step1-base-model.png", "step2-dataset.png", "step3-method.png", "step4-train.png",
        "step5-compare.png", "step6-export.png"]
