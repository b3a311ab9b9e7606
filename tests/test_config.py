import subprocess
import sys

import pytest

from relight_datasets.config import LIGHT_SETUPS, ConfigError, config_from_dict, load_config


def test_mvp_preset_reproduces_the_seed_values():
    config = load_config("mvp")
    assert config.albedo.retinex_scales == [50.0, 100.0, 200.0]
    assert config.albedo.color_balance_percent == 1.0
    assert config.albedo.blend_range == (0.15, 0.25)
    assert config.degradation.weights == {"soft_shading": 0.8, "hard_shadow": 0.0, "specular": 0.0}
    assert config.degradation.light.elevation_deg == (10.0, 80.0)
    assert config.degradation.light.azimuth_deg == (0.0, 360.0)
    # the seed's ambient 0.6-0.85 scaled sRGB values; the same contrast in linear light is its 2.2th power
    assert config.degradation.soft_shading.ambient == pytest.approx((0.6**2.2, 0.85**2.2), abs=0.01)
    assert config.degradation.soft_shading.pattern.blur_kernel_px == (21.0, 51.0)
    assert config.degradation.soft_shading.pattern.families == ["clouds"]
    assert config.degradation.light.setups == {"single": 1.0}  # one white light, as the seed
    assert config.degradation.light.key_kelvin == (6500.0, 6500.0)
    assert config.recombination.background == "original"
    assert config.segmentation.text_prompt == "person"


def test_full_preset_enables_every_degradation_type():
    config = load_config("full")
    assert all(weight > 0 for weight in config.degradation.weights.values())
    assert len(config.degradation.hard_shadow.pattern.families) == 8  # all but voronoi and screen
    assert {s for s, w in config.degradation.light.setups.items() if w > 0} == set(LIGHT_SETUPS) - {"environment_map"}
    assert config.degradation.specular.shininess == (10.0, 100.0)


def test_overrides_and_config_file(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("degradation:\n  soft_shading:\n    ambient: [0.5, 0.7]\nrecombination:\n  background: gray\n")
    config = load_config("mvp", user, ["recombination.background=black", "albedo.retinex_scales=[10, 50]", "seed=7"])
    assert config.degradation.soft_shading.ambient == (0.5, 0.7)
    assert config.recombination.background == "black"
    assert config.albedo.retinex_scales == [10.0, 50.0]
    assert config.seed == 7
    assert config.degradation.light.elevation_deg == (10.0, 80.0)  # untouched keys keep the preset's value


def test_fingerprint_tracks_the_config():
    assert load_config("mvp").fingerprint() == load_config("mvp").fingerprint()
    assert load_config("mvp").fingerprint() != load_config("mvp", overrides=["seed=1"]).fingerprint()
    assert config_from_dict(load_config("full").to_dict()).fingerprint() == load_config("full").fingerprint()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("degradation.soft_shading.ambient=[0.5, 1.5]", "degradation.soft_shading.ambient: values must lie in"),
        ("degradation.weights.soft_shading=-1", "must not be negative"),
        ("degradation.weights={soft_shading: 0, hard_shadow: 0, specular: 0}", "at least one weight must be positive"),
        ("albedo.colour=3", "unknown config key albedo.colour"),
        ("resolution=big", "resolution: expected an integer"),
        ("recombination.background=blue", "must be one of original, gray, black"),
        ("degradation.light.elevation_deg=[60, 20]", "low end 60.0 is above high end 20.0"),
        ("degradation.weights.sunburn=1", "unknown type sunburn"),
        ("degradation.soft_shading.pattern.families=[plaid]", "unknown family plaid"),
        ("albedo.retinex_scales=[]", "need one or more positive sigmas"),
        ("noequals", "expected dotted.key=value"),
    ],
)
def test_invalid_values_fail_with_one_clear_line(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
        load_config("mvp", overrides=[override])
    assert "\n" not in str(error.value)


def test_cli_exits_2_with_one_line_on_bad_config(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/build.py", "--source", str(tmp_path), "--out", str(tmp_path / "out"),
         "--set", "degradation.soft_shading.ambient=[0.2,1.4]"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "degradation.soft_shading.ambient" in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_config_file_and_unknown_preset():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("mvp", "/nonexistent/config.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("huge")
