"""Hardware probe, tier choice, tier presets and the doctor report, all on fake machines."""
import subprocess
from types import SimpleNamespace

import pytest

from engine.config.job import ConfigError, parse_config
from engine.config.tiers import apply_tier, deep_merge, list_tiers, load_tier
from engine.system.doctor import doctor_report, package_status
from engine.system.hardware import TIER_NAMES, HardwareInfo, parse_nvidia_smi, pick_tier, probe, query_nvidia_smi

GIB = 1024 ** 3
MINIMAL = {"model": {"base": "some/model"}, "dataset": {"path": "data"}}


def cuda_info(vram, name="NVIDIA Test GPU", bf16=True):
    return HardwareInfo(backend="cuda", gpu_name=name, vram_gib=vram, gpu_count=1, source="torch",
                        cuda_available=True, bf16_supported=bf16, compute_capability=(8, 6))


# ---- tier choice -------------------------------------------------------------------------

@pytest.mark.parametrize("vram, tier", [
    (None, "cpu"), (0.0, "cpu"), (2.0, "cpu"), (2.9, "cpu"),
    (3.8, "4gb"), (3.9, "4gb"), (5.8, "6gb"), (7.6, "8gb"), (8.0, "8gb"), (9.77, "8gb"),
    (10.75, "12gb"), (11.8, "12gb"), (14.6, "16gb"), (15.9, "16gb"), (19.5, "16gb"),
    (23.6, "24gb+"), (24.0, "24gb+"), (79.2, "24gb+"), (80, "24gb+"),
])
def test_tier_for_every_vram_size(vram, tier):
    assert pick_tier(cuda_info(vram)).name == tier


def test_tier_reason_is_a_plain_sentence():
    reason = pick_tier(cuda_info(11.8, "NVIDIA GeForce RTX 3060")).reason
    assert reason.startswith("NVIDIA GeForce RTX 3060 with 11.8 GiB VRAM → tier 12gb")
    assert "12–16 GB" in reason


def test_too_little_vram_says_so():
    choice = pick_tier(cuda_info(1.95, "GeForce GT 1030"))
    assert choice.name == "cpu" and "too little VRAM" in choice.reason and "1.9" in choice.reason


def test_no_gpu_and_mps_tiers():
    assert pick_tier(HardwareInfo()).name == "cpu"
    mps = pick_tier(HardwareInfo(backend="mps", gpu_name="Apple GPU (Metal)", source="torch"))
    assert mps.name == "8gb" and mps.overrides["optimizer"]["type"] == "AdamW"


def test_24gb_without_bf16_gets_fp16():
    assert pick_tier(cuda_info(23.6)).overrides == {}
    choice = pick_tier(cuda_info(23.6, "Tesla P40", bf16=False))
    assert choice.overrides == {"training": {"mixed_precision": "fp16"}} and "fp16" in choice.reason
    cfg = parse_config(apply_tier({}, choice, MINIMAL))
    assert cfg.training.mixed_precision == "fp16" and cfg.training.batch_size == 4


def test_hardware_tiers_match_preset_files():
    assert list_tiers() == list(TIER_NAMES) == ["cpu", "4gb", "6gb", "8gb", "12gb", "16gb", "24gb+"]


# ---- nvidia-smi --------------------------------------------------------------------------

def test_parse_nvidia_smi_single_and_multiple():
    assert [(g.name, g.vram_gib) for g in parse_nvidia_smi("NVIDIA GeForce RTX 3060, 12288\n")] \
        == [("NVIDIA GeForce RTX 3060", 12.0)]
    text = "NVIDIA A100-SXM4-80GB, 81920\r\nNVIDIA GeForce RTX 4090, 24564\n\n"
    rows = parse_nvidia_smi(text)
    assert [g.name for g in rows] == ["NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 4090"]
    assert rows[0].vram_gib == 80.0 and rows[1].vram_gib == pytest.approx(23.99, abs=0.01)


@pytest.mark.parametrize("text", [
    "", "garbage", "NVIDIA-SMI has failed because it couldn't communicate with the driver.",
    "NVIDIA GeForce GTX 1650, [N/A]", ", 4096", "name, memory.total [MiB]", None,
])
def test_parse_nvidia_smi_garbage(text):
    assert parse_nvidia_smi(text) == []


def test_parse_nvidia_smi_name_with_comma_and_skips_bad_lines():
    rows = parse_nvidia_smi("Weird, Inc GPU, 6144\nnonsense line\nTesla T4, 15360\n")
    assert [(g.name, g.vram_gib) for g in rows] == [("Weird, Inc GPU", 6.0), ("Tesla T4", 15.0)]


def fake_run(stdout="", returncode=0, exc=None, stderr=""):
    def run(cmd, **kwargs):
        assert cmd[0] == "nvidia-smi" and kwargs.get("timeout")
        if exc is not None:
            raise exc
        return SimpleNamespace(stdout=stdout, stderr=stderr, returncode=returncode)
    return run


@pytest.mark.parametrize("run, why", [
    (fake_run(exc=FileNotFoundError("nvidia-smi")), "not found"),
    (fake_run(exc=subprocess.TimeoutExpired("nvidia-smi", 10)), "did not answer"),
    (fake_run(exc=PermissionError("denied")), "could not run"),
    (fake_run(returncode=9, stderr="NVIDIA-SMI has failed\n"), "failed (exit 9)"),
    (fake_run(stdout="garbage\n"), "no GPUs"),
])
def test_query_nvidia_smi_failures(run, why):
    gpus, reason = query_nvidia_smi(run)
    assert gpus == [] and why in reason


# ---- probe with fake torch ---------------------------------------------------------------

def fake_torch(cuda=False, name="NVIDIA GeForce RTX 4090", total=24 * GIB, count=1, cap=(8, 9),
               bf16=True, mps=False, cuda_version="12.4"):
    props = SimpleNamespace(name=name, total_memory=total)
    cuda_ns = SimpleNamespace(
        is_available=lambda: cuda, device_count=lambda: count,
        get_device_properties=lambda i: props, get_device_capability=lambda i: cap,
        is_bf16_supported=lambda including_emulation=True: bf16)
    return SimpleNamespace(
        __version__="2.13.0", cuda=cuda_ns,
        version=SimpleNamespace(cuda=cuda_version if cuda_version else None, hip=None),
        backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps)))


def no_smi(*a, **k):
    raise FileNotFoundError("nvidia-smi")


def test_probe_uses_torch_cuda_first():
    def smi_must_not_run(*a, **k):
        raise AssertionError("nvidia-smi should not be needed")
    info = probe(fake_torch(cuda=True, count=2), run=smi_must_not_run)
    assert (info.backend, info.source, info.gpu_name) == ("cuda", "torch", "NVIDIA GeForce RTX 4090")
    assert info.vram_gib == 24.0 and info.gpu_count == 2 and info.cuda_available
    assert info.bf16_supported and info.compute_capability == (8, 9)
    assert any("2 GPUs" in n for n in info.notes) and pick_tier(info).name == "24gb+"


def test_probe_bf16_needs_ampere():
    info = probe(fake_torch(cuda=True, name="Tesla T4", total=15 * GIB, cap=(7, 5)), run=no_smi)
    assert not info.bf16_supported and pick_tier(info).name == "16gb"


def test_probe_cpu_torch_with_nvidia_smi_gpu():
    info = probe(fake_torch(cuda=False, cuda_version=None),
                 run=fake_run("NVIDIA GeForce RTX 3060, 12288\n"))
    assert (info.backend, info.source, info.gpu_name, info.vram_gib) == \
        ("cpu", "nvidia-smi", "NVIDIA GeForce RTX 3060", 12.0)
    assert info.torch_build == "cpu" and not info.cuda_available
    assert any("CPU-only build" in n and "CUDA build of PyTorch" in n for n in info.notes)
    choice = pick_tier(info)
    assert choice.name == "cpu" and "CUDA build of PyTorch" in choice.reason


def test_probe_plain_cpu_and_mps_and_missing_torch():
    cpu = probe(fake_torch(cuda_version=None), run=no_smi)
    assert (cpu.backend, cpu.source, cpu.gpu_name, cpu.notes) == ("cpu", "none", None, [])
    mps = probe(fake_torch(mps=True, cuda_version=None), run=no_smi)
    assert mps.backend == "mps" and mps.vram_gib is None
    missing = probe(None, run=fake_run("garbage"))
    assert missing.torch_build == "missing" and missing.backend == "cpu"


def test_probe_survives_broken_cuda():
    torch = fake_torch(cuda=True)
    torch.cuda.get_device_properties = lambda i: (_ for _ in ()).throw(RuntimeError("driver old"))
    info = probe(torch, run=no_smi)
    assert info.backend == "cpu" and any("driver old" in n for n in info.notes)


def test_real_probe_does_not_crash():
    info = probe()
    assert info.backend in ("cuda", "mps", "cpu") and pick_tier(info).name in TIER_NAMES


# ---- presets -----------------------------------------------------------------------------

@pytest.mark.parametrize("tier", ["cpu", "4gb", "6gb", "8gb", "12gb", "16gb", "24gb+"])
def test_every_tier_file_parses_into_a_job(tier):
    delta = load_tier(tier)
    assert delta, "a tier file should change something"
    cfg = parse_config(apply_tier({}, tier, MINIMAL))
    assert cfg.model.base == "some/model"
    if tier == "cpu":
        assert cfg.training.mixed_precision == "no" and cfg.optimizer.type == "AdamW"
        assert cfg.dataset.resolution == 256
    elif tier in ("4gb", "6gb", "8gb"):
        assert cfg.optimizer.type == "AdamW8bit" and cfg.training.gradient_checkpointing


def test_tier_files_are_sparse():
    defaults = parse_config(MINIMAL).model_dump()
    for tier in list_tiers():
        for section, values in load_tier(tier).items():
            for key, value in values.items():
                assert defaults[section][key] != value, f"{tier}: {section}.{key} equals the default"


def test_unknown_tier_lists_valid_names():
    with pytest.raises(ValueError) as err:
        apply_tier({}, "10gb", MINIMAL)
    assert "unknown tier '10gb'" in str(err.value) and "cpu, 4gb, 6gb" in str(err.value)
    with pytest.raises(ValueError, match="24gb\\+"):
        load_tier("../config")


def test_user_values_beat_the_tier():
    user = {**MINIMAL, "training": {"batch_size": 8, "mixed_precision": "no"},
            "network": {"dim": 4}}
    merged = apply_tier({"training": {"seed": 7, "batch_size": 3}}, "8gb", user)
    cfg = parse_config(merged)
    assert cfg.training.batch_size == 8 and cfg.training.mixed_precision == "no"   # user
    assert cfg.network.dim == 4 and cfg.network.alpha == 8.0                       # user, default
    assert cfg.training.gradient_checkpointing and cfg.optimizer.type == "AdamW8bit"  # tier
    assert cfg.training.seed == 7                                                  # base layer
    assert parse_config(apply_tier({"training": {"batch_size": 3}}, "8gb", MINIMAL)) \
        .training.batch_size == 2                                                  # tier > base
    assert user["training"] == {"batch_size": 8, "mixed_precision": "no"}          # not mutated


def test_tier_network_keys_skipped_for_other_methods():
    merged = apply_tier({}, "12gb", {**MINIMAL, "network": {"type": "ti"}})
    assert merged["network"] == {"type": "ti"} and merged["training"]["batch_size"] == 2


def test_deep_merge_is_recursive_and_pure():
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    out = deep_merge(base, {"a": {"b": 2}, "e": {"f": 3}})
    assert out == {"a": {"b": 2, "c": [1]}, "d": 1, "e": {"f": 3}}
    out["a"]["c"].append(2)
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}
    assert deep_merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}


def test_broken_tier_file_is_reported(tmp_path, monkeypatch):
    import engine.config.tiers as presets
    (tmp_path / "cpu.toml").write_text("[training]\nbatchsize = 2\n")
    (tmp_path / "4gb.toml").write_text("[training\n")
    monkeypatch.setattr(presets, "TIERS_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"(?s)cpu\.toml.*training\.batchsize: unknown field"):
        load_tier("cpu")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_tier("4gb")


# ---- doctor ------------------------------------------------------------------------------

def test_doctor_report_mentions_tier_and_packages(tmp_path):
    text = doctor_report(cuda_info(7.8, "NVIDIA GeForce RTX 3070"), try_import=False,
                         packages=("pytest", "surely_not_installed_pkg_42"), cwd=tmp_path)
    assert "Preset tier:" in text and "8gb" in text and "RTX 3070" in text
    assert "Python:" in text and "PyTorch:" in text and "GiB free" in text
    assert "surely_not_installed_pkg_42 missing" in " ".join(text.split())
    assert "AdamW8bit, which needs bitsandbytes" not in text  # bitsandbytes not checked here


def test_doctor_warns_when_tier_needs_missing_bitsandbytes(monkeypatch):
    import engine.system.doctor as doctor
    monkeypatch.setattr(doctor, "package_status", lambda name, try_import=True: "missing")
    text = doctor_report(cuda_info(5.8), packages=("bitsandbytes",))
    assert "tier 6gb uses AdamW8bit" in text


def test_doctor_never_crashes_on_odd_input(monkeypatch):
    import engine.system.doctor as doctor
    monkeypatch.setattr(doctor, "pick_tier", lambda info: 1 / 0)
    text = doctor_report(HardwareInfo(), packages=(), cwd="/definitely/not/a/dir")
    assert "could not choose a tier" in text and "Disk:" in text


def test_package_status_for_missing_and_broken_packages(tmp_path, monkeypatch):
    assert package_status("surely_not_installed_pkg_42") == "missing"
    (tmp_path / "broken_pkg_for_doctor.py").write_text("print('noise')\nraise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "import failed: boom" in package_status("broken_pkg_for_doctor")


def test_live_doctor_report_runs():
    text = doctor_report(try_import=False)
    assert "Preset tier:" in text and "Packages:" in text


def test_family_tables_are_sparse_and_sized_for_their_family():
    """A [family.<id>] table lists only what differs from its tier for that family; a job whose
    base is of that family gets it (model.family, or read from the base), others do not."""
    import tomllib

    from engine.config.tiers import TIERS_DIR, job_family
    from engine.models import families

    defaults = parse_config(MINIMAL).model_dump()
    for tier in list_tiers():
        data = tomllib.loads((TIERS_DIR / f"{tier}.toml").read_text(encoding="utf-8"))
        own = load_tier(tier)
        for family, table in data.get("family", {}).items():
            for section, values in table.items():
                for key, value in values.items():
                    fallback = defaults[section].get(key)
                    if (section, key) == ("dataset", "resolution"):  # the wizard sets the family's
                        fallback = families.family(family).default_resolution
                    assert own.get(section, {}).get(key, fallback) != value, f"{tier} {family}: {section}.{key}"
    sdxl = {**MINIMAL, "model": {"base": "some/model", "family": "sdxl"}}
    assert job_family(sdxl) == "sdxl" and job_family(MINIMAL) is None
    assert job_family({"model": {"base": "embedded"}}) == "sd15"
    cfg = parse_config(apply_tier({}, "12gb", sdxl))
    assert (cfg.training.batch_size, cfg.network.train_unet_only, cfg.training.cache_text_encoder_outputs) == (1, True, True)
    assert parse_config(apply_tier({}, "12gb", MINIMAL)).training.batch_size == 2  # SD 1.x sizing


def test_a_tier_never_makes_a_job_invalid_by_caching_a_trained_text_encoder():
    """The SDXL 12 GB table caches the text encoders' outputs with a UNet-only LoRA; a LoCon
    (its own network fields) or a user who trains the text encoder keeps a valid job."""
    from webapp.job_view import apply_tier as page_apply_tier

    sdxl = {"base": "some/model", "family": "sdxl"}
    locon = parse_config(apply_tier({}, "12gb", {**MINIMAL, "model": sdxl, "network": {"type": "locon"}}))
    assert not locon.training.cache_text_encoder_outputs and locon.training.gradient_checkpointing
    mine = parse_config(apply_tier({}, "12gb", {**MINIMAL, "model": sdxl, "network": {"train_unet_only": False}}))
    assert not mine.network.train_unet_only and not mine.training.cache_text_encoder_outputs
    shuffled = parse_config(apply_tier({}, "12gb", {**MINIMAL, "model": sdxl,
                                                    "dataset": {**MINIMAL["dataset"], "shuffle_caption": True}}))
    assert shuffled.network.train_unet_only and not shuffled.training.cache_text_encoder_outputs
    page = page_apply_tier({**MINIMAL, "model": sdxl, "network": {"type": "locon"}}, "12gb")
    assert not page.get("training", {}).get("cache_text_encoder_outputs") and parse_config(page)
