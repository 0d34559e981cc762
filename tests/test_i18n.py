"""English and Simplified Chinese: same keys, same placeholders, every key the code uses exists,
the browser's language picks the page and `--lang` overrides it."""
from __future__ import annotations

import re
import string
import urllib.request

import pytest
from conftest import ROOT


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_catalogues_have_the_same_keys_and_placeholders():
    from engine.i18n import LANGUAGES, catalogue

    en = catalogue("en")
    for lang in LANGUAGES:
        words = catalogue(lang)
        assert set(words) == set(en), (lang, sorted(set(en) ^ set(words)))
        for key, text in words.items():
            assert text.strip(), (lang, key)
            assert placeholders(text) == placeholders(en[key]), (lang, key)
    zh = catalogue("zh")
    # really translated: most texts contain Chinese characters (names like SDXL may stay)
    chinese = [k for k, v in zh.items() if re.search(r"[\u4e00-\u9fff]", v)]
    assert len(chinese) > 0.8 * len([k for k, v in zh.items() if v not in ("-", "README.md")])


def keys_used_in_code() -> set[str]:
    """Literal t("...") keys in the web app, plus the ones it builds from names."""
    from webapp.job_form import FIELDS, METHODS

    keys = set()
    for path in [*(ROOT / "webapp").glob("*.py"), ROOT / "engine" / "export" / "card_render.py",
                 *(ROOT / "engine" / "config").glob("*.py")]:
        keys |= set(re.findall(r'\bt\(\s*"([a-z_]+\.[a-z_.]+)"', path.read_text(encoding="utf-8")))
    keys |= {f"field.{f.path}.{part}" for f in FIELDS for part in ("label", "why")}
    keys |= {f"field.{f.path}.{part}" for f in FIELDS if not f.advanced for part in ("range", "high", "low")}
    keys |= {f"method.name_{m}" for m in METHODS}
    keys |= {f"dataset.check_{level}" for level in ("error", "note", "warning")}
    validate = (ROOT / "engine" / "data" / "validate.py").read_text(encoding="utf-8")
    keys |= {f"validate.{k}" for k in re.findall(r'\.(?:error|warn|note)\("([a-z_]+)"', validate)}
    keys |= {f"base.family_{f}" for f in ("sd15", "sd2", "sdxl")}
    keys |= {f"base.kind_{k}" for k in ("diffusers", "single_file", "hub")}
    keys |= {f"train.status_{s}" for s in ("idle", "running", "done", "stopped", "failed")}
    keys |= {"method.too_high", "method.too_low"}
    from engine.i18n import CONFIG_ERROR_TYPES
    keys |= {f"errors.{k}" for k in CONFIG_ERROR_TYPES}
    # keys of the engine's explained errors: XError("English...", "key", ...)
    keys |= {f"errors.{key}" for _, _, key in explained_error_calls() if key}
    assert "errors.dataset_not_found" in keys and "errors.model_pickle" in keys and "errors.config_not_diffusers" in keys
    from engine.data.importer import SKIP_REASONS
    keys |= {f"dataset.skip_{k}" for k in SKIP_REASONS}
    keys |= {f"tier.{k}" for k in ("gpu_with_vram", "reason_mps", "reason_cpu_unusable", "reason_cpu",
                                   "reason_low_vram", "reason_gpu", "reason_fp16", "fix_cuda", "fix_driver")}
    return keys


def explained_error_classes() -> set[str]:
    """Names of the engine's user-facing error classes (engine.i18n.Explained and subclasses)."""
    import importlib
    import inspect

    from engine.i18n import Explained

    names = set()
    for path in (ROOT / "engine").rglob("*.py"):
        if "demo" in path.parts or path.name == "__main__.py":
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        names |= {n for n, c in inspect.getmembers(module, inspect.isclass)
                  if issubclass(c, Explained) and c.__module__ == module.__name__}
    return names


def explained_error_calls() -> list[tuple[str, int, str | None]]:
    """(file, line, catalogue key or None) of every construction of an explained error in engine/."""
    import ast

    classes = explained_error_classes()
    assert {"ModelLoadError", "PresetError", "SetupError", "UserInputError"} <= classes, classes
    calls = []
    for path in (ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
                key = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "key"), None)
                # a literal, or literals chosen by a condition ("a" if fp16 else "b")
                branches = [key.body, key.orelse] if isinstance(key, ast.IfExp) else [key]
                found = [n.value for n in branches if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                calls += [(path.relative_to(ROOT).as_posix(), node.lineno, k) for k in found or [None]]
    return calls


def test_every_user_facing_engine_error_carries_a_catalogue_key():
    """Each user-facing error the engine raises names its text in the catalogues (a literal key),
    so the web app can say it in Chinese; wrappers use ``.wrapping(err)``, which keeps the key."""
    calls = explained_error_calls()
    assert len(calls) > 120
    unkeyed = [f"{file}:{line}" for file, line, key in calls if key is None]
    assert not unkeyed, unkeyed


def test_every_key_the_code_uses_is_in_both_catalogues():
    from engine.i18n import LANGUAGES, catalogue

    used = keys_used_in_code()
    assert len(used) > 150
    for lang in LANGUAGES:
        missing = sorted(used - set(catalogue(lang)))
        assert not missing, (lang, missing)


def test_a_missing_key_fails_loudly(tmp_path, monkeypatch):
    import engine.i18n as i18n

    (tmp_path / "en.toml").write_text('[a]\nb = "x"\n', encoding="utf-8")
    (tmp_path / "zh.toml").write_text('[a]\nb = "乙"\nc = "丙"\n', encoding="utf-8")
    monkeypatch.setattr(i18n, "LOCALES", tmp_path)
    i18n.catalogue.cache_clear()
    try:
        with pytest.raises(KeyError, match="no text for 'a.c' in the en catalogue"):
            i18n.Translator("en")("a.c")
        assert i18n.Translator("zh")("a.c") == "丙"
    finally:
        i18n.catalogue.cache_clear()


@pytest.mark.parametrize("header, forced, expected", [
    ("zh-CN,zh;q=0.9,en;q=0.8", None, "zh"), ("en-US,en;q=0.9", None, "en"),
    ("fr-FR,zh-TW;q=0.8", None, "zh"), ("fr-FR", None, "en"), (None, None, "en"),
    ("zh-CN", "en", "en"), ("en", "zh", "zh")])
def test_language_from_the_browser_or_forced(header, forced, expected):
    from engine.i18n import pick_language

    assert pick_language(header, forced) == expected


def test_guidance_names_the_tier_value_and_the_schemas_range():
    from engine.config.tiers import load_tier
    from engine.i18n import Translator
    from webapp.job_form import BY_KEY, field_help

    en, zh = Translator("en"), Translator("zh")

    def say(t, key, tier):
        return field_help(t, BY_KEY[key], "lora", load_tier(tier), tier)

    assert say(en, "dataset-resolution", "cpu").endswith("Allowed: 64 to 4096. Tier cpu: 256.")
    assert "Too high:" in say(en, "optimizer-lr", "cpu") and "stuck above ~0.3" in say(en, "optimizer-lr", "cpu")
    assert say(zh, "network-dim", "8gb").endswith("。") and "档位 8gb" in say(zh, "network-dim", "8gb")
    assert say(en, "training-seed", "cpu").endswith("Tier cpu: not set (the default).")
    assert "Allowed: 1 to 1024." in say(en, "training-batch_size", "cpu")  # from the job schema


def test_server_redirects_by_browser_language_and_speaks_it(tmp_path, monkeypatch):
    from gradio_client import Client

    from engine.system.hardware import HardwareInfo, pick_tier
    from webapp.server import build_server, find_free_port, run_server

    monkeypatch.setenv("LORAFORGE_OUTPUT", str(tmp_path))
    port = find_free_port("127.0.0.1", 7960)
    server = run_server(build_server(tier=pick_tier(HardwareInfo())), "127.0.0.1", port, block=False)
    try:
        base = f"http://127.0.0.1:{port}/"

        def landing(accept: str) -> str:
            req = urllib.request.Request(base, headers={"Accept-Language": accept})
            with urllib.request.urlopen(req) as resp:
                return resp.geturl()

        assert landing("zh-CN,zh;q=0.9") == base + "zh/"
        assert landing("de-DE,en;q=0.5") == base + "en/"
        zh = Client(base + "zh/", verbose=False)
        kind = zh.predict("embedded", api_name="/detect_base")
        assert kind == "shapes-base: Stable Diffusion 1.x (diffusers 文件夹)"
        report = zh.predict(str(ROOT / "presets" / "demo" / "zkz_star"), api_name="/check_dataset")[0]
        assert report.startswith("训练会用到 12 张图片，含重复每轮 120 张"), report
        assert "不是有效的 TOML" in zh.predict("[[", api_name="/set_job_toml")[-3]
        missing = zh.predict(str(tmp_path / "nope"), api_name="/check_dataset")[0]
        assert missing == f"无法使用该数据集：找不到数据集文件夹：{tmp_path / 'nope'}"
        assert zh.predict(str(tmp_path / "m.ckpt"), api_name="/detect_base") == (
            f"无法使用该模型：找不到模型文件或文件夹：{tmp_path / 'm.ckpt'}")
        en = Client(base + "en/", verbose=False)
        assert "not valid TOML" in en.predict("[[", api_name="/set_job_toml")[-3]
    finally:
        server.should_exit = True

    port = find_free_port("127.0.0.1", port + 1)
    forced = run_server(build_server(lang="en", tier=pick_tier(HardwareInfo())), "127.0.0.1", port, block=False)
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Accept-Language": "zh-CN"})
        with urllib.request.urlopen(req) as resp:
            assert resp.geturl() == f"http://127.0.0.1:{port}/en/"
    finally:
        forced.should_exit = True


def test_model_card_in_chinese(trained_lora, tmp_path):
    """The card's README and HTML follow the language; the sidecar and card.json keep the keys
    A1111 and Civitai read."""
    import json

    from engine.export.card import SampleSettings, export_card

    cfg, result = trained_lora
    none = SampleSettings(count=0)
    en = export_card(result.final_path, tmp_path / "en", samples=none)
    zh = export_card(result.final_path, tmp_path / "zh", samples=none, lang="zh")
    readme = zh.files["readme"].read_text(encoding="utf-8")
    for heading in ("## 使用方法", "## 训练参数", "## 哈希值", "## 许可证与权限", "| 触发词 | zkz star |"):
        assert heading in readme, heading
    assert "How to use" not in readme and "## How to use" in en.files["readme"].read_text(encoding="utf-8")
    assert "<html lang='zh-CN'>" in zh.files["card_html"].read_text(encoding="utf-8")
    assert json.loads(zh.files["sidecar"].read_text(encoding="utf-8")) == json.loads(
        en.files["sidecar"].read_text(encoding="utf-8"))


def test_config_errors_in_the_pages_language():
    """Field errors keep the field name and the bad value, and say the rest in Chinese; every
    error type we translate exists in both catalogues (checked with the other keys)."""
    from engine.i18n import Translator
    from webapp.wizard_logic import demo_job, plan

    job = demo_job()
    job["dataset"]["resolution"] = 65
    job["training"]["epochs"] = 0
    job["network"]["dimm"] = 4
    checked = plan(job, Translator("zh"))
    zh = checked.text
    assert not checked.ok and zh.startswith("任务还不能开始：任务配置无效：")
    assert "dataset.resolution: 必须是 64 的倍数（当前值 65）" in zh
    assert "training.epochs: 不能小于 1（当前值 0）" in zh
    assert "network.dimm: 未知字段（请检查拼写）" in zh
    assert "dataset.resolution: must be a multiple of 64 (got 65)" in plan(job).text


def test_engine_errors_in_chinese():
    """Errors the engine raises carry a key, so the page can say them in Chinese; without a
    key (or in English) the engine's own message is shown."""
    from engine.generate.grid import GridError, parse_weights
    from engine.i18n import Translator, describe_error
    from engine.training.guards import TrainingDiverged, check_loss

    zh, en = Translator("zh"), Translator("en")
    with pytest.raises(TrainingDiverged) as nan:
        check_loss(float("nan"), 7, 2, None, "fp16")
    assert "第 7 步（第 2 轮）loss 变成了 nan" in describe_error(nan.value, zh)
    assert "bf16" in describe_error(nan.value, zh)
    assert describe_error(nan.value, en).startswith("the loss became nan at step 7 (epoch 2)")
    with pytest.raises(GridError) as bad:
        parse_weights("a, b")
    assert describe_error(bad.value, zh) == "权重必须是数字，例如 '0, 0.5, 1'，或范围，例如 '0.4-1.0(+0.2)'（当前为 a, b）"
    assert describe_error(ValueError("plain"), zh) == "plain"


def test_resume_without_state_and_import_errors_in_chinese(tmp_path):
    from engine.config.job import parse_config
    from engine.data.folder import DatasetError
    from engine.data.importer import import_concept
    from engine.i18n import Translator, describe_error
    from engine.training.loop import _find_resume_state
    from engine.training.state import StateError
    from webapp.wizard_logic import demo_job

    zh = Translator("zh")
    job = demo_job()
    job["output"]["dir"] = str(tmp_path / "runs")
    with pytest.raises(StateError) as none:
        _find_resume_state(parse_config(job), "auto")
    assert "里没有可继续的训练状态" in describe_error(none.value, zh)
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DatasetError) as err:
        import_concept(bad, tmp_path / "ws", "c", 2)
    assert describe_error(err.value, zh) == "x.zip 不是可读取的 zip 文件"


def test_rarer_engine_errors_in_chinese(tmp_path):
    """The newly keyed ones: a preset with bad settings (field problems listed in Chinese), a
    job-rule error from a validator, a wrapped method error (TI token clash), a nested file error,
    a bad sample-prompt line, the hardware tier's reason and the importer's skip reasons."""
    from engine.config.job import ConfigError, parse_config
    from engine.config.preset_share import PresetError, export_preset, parse_preset
    from engine.data.importer import import_concept
    from engine.generate.lora_apply import LoraFileError
    from engine.i18n import Translator, UserInputError, describe_error
    from engine.system.hardware import HardwareInfo, pick_tier
    from engine.training.setup import SetupError
    from webapp.wizard_logic import demo_job

    zh, en = Translator("zh"), Translator("en")
    text = export_preset(parse_config(demo_job()), "demo")
    with pytest.raises(PresetError) as bad:
        parse_preset(text.replace("resolution = 64", "resolution = 65"))
    said = describe_error(bad.value, zh)
    assert said.startswith("预设里的参数无效：") and "dataset.resolution: 必须是 64 的倍数（当前值 65）" in said
    assert "invalid preset settings" in str(bad.value)  # the CLI keeps the engine's English

    job = demo_job()
    job["scheduler"] = {"type": "constant", "warmup_steps": 10}
    with pytest.raises(ConfigError) as rule:
        parse_config(job)
    assert "scheduler.warmup_steps 需要 scheduler.type 为 'constant_with_warmup'" in describe_error(rule.value, zh)
    job = demo_job()
    job["sample"] = {"prompts": ["zkz star --q 3"]}
    with pytest.raises(ConfigError) as line:
        parse_config(job)
    said = describe_error(line.value, zh)
    assert "sample.prompts: 第 1 行：预览提示词 zkz star --q 3 里有未知参数 --q" in said, said
    assert "unknown flag --q" in describe_error(line.value, en)

    clash = SetupError.wrapping(UserInputError("token clash", "ti_token_clash", token="star"))
    assert describe_error(clash, zh) == "词元 star 已经是分词器里的词了；请换一个自造的名字（例如 'zkzstar'）"
    nested = LoraFileError("a.safetensors: ...", "file_problem", name="a.safetensors",
                           error=UserInputError("x", "file_modules_differ"))
    assert describe_error(nested, zh) == "a.safetensors：文件里的模块与已加载的网络不一致"

    cpu = pick_tier(HardwareInfo())
    assert cpu.describe(zh) == "没有找到可用的显卡 → cpu 档（小、慢、全精度）" and cpu.describe(en) == cpu.reason

    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.pdf").write_bytes(b"%PDF")
    from PIL import Image
    Image.new("RGB", (64, 64), "red").save(src / "a.png")
    rep = import_concept(src, tmp_path / "ws", "c", 1)
    assert [(n, zh(f"dataset.skip_{why}")) for n, why in rep.skipped] == [("notes.pdf", "不是图片或标注文件")]


def test_serve_shows_the_tier_reason_in_each_language(tmp_path, monkeypatch, capsys):
    """What `python launcher.py` runs: it probes the machine once, prints the tier, and each
    language's page explains the tier in its own words."""
    import json

    from engine.i18n import LANGUAGES, Translator
    from engine.system.hardware import pick_tier, probe
    from webapp.server import find_free_port, serve

    monkeypatch.setenv("LORAFORGE_OUTPUT", str(tmp_path / "out"))
    choice = pick_tier(probe())
    port = find_free_port("127.0.0.1", 7990)
    server = serve(port=port, open_browser=False, block=False)
    try:
        assert f"preset tier: {choice.name}" in capsys.readouterr().out
        for lang in LANGUAGES:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{lang}/config") as resp:
                config = json.loads(resp.read())
            infos = [c.get("props", {}).get("info") for c in config["components"]]
            assert choice.describe(Translator(lang)) in infos, lang
    finally:
        server.should_exit = True


def test_an_unexpected_training_failure_is_prefixed_in_the_pages_language(tmp_path, monkeypatch):
    """A crash with no catalogue key (here an OSError from the training thread) still reads
    "失败：..." on the Chinese page, with the error's own text inside, and the message that
    said "started" now says so."""
    import time

    import tomli_w
    from gradio_client import Client

    from engine.system.hardware import HardwareInfo, pick_tier
    from engine.training.jobs import JobRunner
    from webapp.server import build_server, find_free_port, run_server
    from webapp.wizard_logic import demo_job

    def crash(cfg, callbacks, stop, **kw):
        raise OSError("No space left on device")

    monkeypatch.setenv("LORAFORGE_OUTPUT", str(tmp_path))
    port = find_free_port("127.0.0.1", 7930)
    server = run_server(build_server(tier=pick_tier(HardwareInfo()), runner=JobRunner(train_fn=crash)),
                        "127.0.0.1", port, block=False)
    try:
        zh = Client(f"http://127.0.0.1:{port}/zh/", verbose=False)
        job = demo_job()
        job["output"]["dir"] = str(tmp_path / "runs")
        zh.predict(tomli_w.dumps(job), api_name="/set_job_toml")
        assert zh.predict(api_name="/start_training")[0].startswith("已开始，写入 ")
        deadline = time.time() + 30
        while not (head := zh.predict(api_name="/status")[0]).startswith("失败") and time.time() < deadline:
            time.sleep(0.3)
        assert head == "失败：OSError: No space left on device", head
    finally:
        server.should_exit = True
