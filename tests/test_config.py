"""Every config error path gives a message naming the field; TOML round-trips."""
import pytest

from engine.config.job import ConfigError, dump_config, load_config, parse_config, save_config

BASE = {"model": {"base": "some/model"}, "dataset": {"path": "data"}}


def with_(section, **values):
    data = {k: dict(v) for k, v in BASE.items()}
    data.setdefault(section, {}).update(values)
    return data


def error_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


def test_defaults_are_valid_and_network_defaults_to_lora():
    cfg = parse_config(BASE)
    assert cfg.network.type == "lora" and cfg.network.dim == 16 and cfg.network.alpha == 8.0
    assert parse_config(with_("network", dim=4)).network.type == "lora"


@pytest.mark.parametrize("data, expected", [
    (with_("network", dimm=4), "network.dimm: unknown field"),
    (with_("training", learning_rate=1e-4), "training.learning_rate: unknown field"),
    ({**BASE, "extra_section": {}}, "extra_section: unknown field"),
    ({"dataset": {"path": "d"}}, "model: required field is missing"),
    ({"model": {}, "dataset": {"path": "d"}}, "model.base: required field is missing"),
    (with_("dataset", resolution=500), "dataset.resolution: Input should be a multiple of 64 (got 500)"),
    (with_("dataset", resolution=0), "dataset.resolution: Input should be greater than or equal to 64"),
    (with_("dataset", default_repeats=0), "dataset.default_repeats: Input should be greater than or equal to 1"),
    (with_("dataset", caption_dropout_rate=1.5), "dataset.caption_dropout_rate: Input should be less than or equal to 1"),
    (with_("network", dim=0), "network.dim: Input should be greater than or equal to 1 (got 0)"),
    (with_("network", alpha=0), "network.alpha: Input should be greater than 0 (got 0)"),
    (with_("network", dropout=1.0), "network.dropout: Input should be less than 1"),
    (with_("network", type="lokr2"), "network: Input tag 'lokr2'"),
    (with_("network", conv_dim=-1), "network.conv_dim: Input should be greater than or equal to 0"),
    (with_("optimizer", type="SGD"), "optimizer.type: Input should be 'AdamW', 'AdamW8bit', 'Adafactor', 'Lion' or 'Prodigy'"),
    (with_("optimizer", lr=0), "optimizer.lr: Input should be greater than 0"),
    (with_("optimizer", lr="fast"), "optimizer.lr: Input should be a valid number"),
    (with_("optimizer", type="Prodigy", lr=1e-4), "optimizer.lr: Prodigy adapts the step size itself"),
    (with_("scheduler", type="exponential"), "scheduler.type: Input should be 'constant'"),
    (with_("scheduler", warmup_steps=10), "scheduler.warmup_steps needs scheduler.type 'constant_with_warmup'"),
    (with_("scheduler", num_cycles=0), "scheduler.num_cycles: Input should be greater than or equal to 1"),
    (with_("training", mixed_precision="fp8"), "training.mixed_precision: Input should be 'no', 'fp16' or 'bf16'"),
    (with_("training", attention="flash"), "training.attention: Input should be 'sdpa' or 'xformers'"),
    (with_("training", epochs=0), "training.epochs: Input should be greater than or equal to 1"),
    (with_("training", batch_size=0), "training.batch_size: Input should be greater than or equal to 1"),
    (with_("training", gradient_accumulation_steps=0), "training.gradient_accumulation_steps: Input should be greater"),
    (with_("training", noise_offset=-0.1), "training.noise_offset: Input should be greater than or equal to 0"),
    (with_("training", min_snr_gamma=0), "training.min_snr_gamma: Input should be greater than 0"),
    (with_("training", clip_skip=0), "training.clip_skip: Input should be greater than or equal to 1"),
    (with_("training", seed=-1), "training.seed: Input should be greater than or equal to 0"),
    (with_("output", name="../evil"), "output.name: String should match pattern"),
    (with_("output", name=""), "output.name: String should have at least 1 character"),
    (with_("output", save_precision="int8"), "output.save_precision: Input should be 'fp16', 'bf16' or 'fp32'"),
    (with_("model", family="sd3"), "model.family: Input should be 'auto', 'sd15', 'sd2', 'sdxl' or 'flux1'"),
    ({**BASE, "schema_version": 99}, "schema_version: 99 is newer than this build understands"),
    ({**BASE, "schema_version": "one"}, "schema_version: must be an integer"),
    ({**BASE, "schema_version": 0}, "schema_version: 0 is not a valid version"),
])
def test_error_messages_name_the_field(data, expected):
    assert expected in error_of(data)


def test_several_errors_are_all_reported():
    msg = error_of({"model": {"base": "x"}, "dataset": {"path": "d", "resolution": 7},
                    "network": {"dim": 0}})
    assert "dataset.resolution" in msg and "network.dim" in msg


def test_toml_round_trip(tmp_path):
    cfg = parse_config(with_("network", dim=32, alpha=16, conv_dim=8, conv_alpha=4))
    path = tmp_path / "job.toml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert "[network]" in dump_config(cfg) and 'type = "lora"' in dump_config(cfg)


def test_toml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nbase = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_validating_a_job_does_not_import_torch():
    """A typo must be reported instantly, not after seconds of ML imports."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys; from engine.config.job import parse_config; "
            "parse_config({'model': {'base': 'x'}, 'dataset': {'path': 'd'}, "
            "'sample': {'prompts': ['a cat --s 3 --l 5']}}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
