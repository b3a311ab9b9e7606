"""Tests for the procedural shadow patterns in ``relight_datasets.ops.patterns``."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from relight_datasets.ops.patterns import PATTERN_FAMILIES, render_pattern, render_pattern_from_params

REQUIRED_KEYS = {"family", "rotation_deg", "scale", "translate"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add overhead, and stall badly when the cores are busy elsewhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _params(family: str, **overrides) -> dict:
    """Params drawn for ``family`` with some entries replaced."""
    _, params = render_pattern(family, 8, 8, _gen(0))
    params.update(overrides)
    return params


def _assert_json_plain(value, where: str = "params") -> None:
    """Only str / int / float / bool and lists (or dicts) of those; floats finite."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), where
            _assert_json_plain(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _assert_json_plain(item, f"{where}[{i}]")
    else:
        assert isinstance(value, (str, int, float, bool)), f"{where} has type {type(value).__name__}"
        if isinstance(value, float):
            assert math.isfinite(value), where


def test_family_list() -> None:
    assert PATTERN_FAMILIES == (
        "venetian_blinds",
        "window_frame",
        "perlin_noise",
        "voronoi",
        "lattice",
        "curtain_folds",
        "fence",
        "foliage",
        "clouds",
        "screen",
    )


@pytest.mark.parametrize("family", PATTERN_FAMILIES)
@pytest.mark.parametrize(("height", "width"), [(48, 80), (64, 64), (90, 37)])
def test_shape_dtype_range(family: str, height: int, width: int) -> None:
    pattern, params = render_pattern(family, height, width, _gen(3), device="cpu")
    assert pattern.shape == (1, 1, height, width)
    assert pattern.dtype == torch.float32
    assert pattern.device.type == "cpu"
    assert torch.isfinite(pattern).all()
    assert pattern.min() >= 0.0 and pattern.max() <= 1.0
    assert params["family"] == family


@pytest.mark.parametrize("family", PATTERN_FAMILIES)
def test_deterministic_for_a_generator_state(family: str) -> None:
    a, params_a = render_pattern(family, 64, 96, _gen(11))
    b, params_b = render_pattern(family, 64, 96, _gen(11))
    assert torch.equal(a, b)
    assert params_a == params_b
    c, params_c = render_pattern(family, 64, 96, _gen(12))
    assert params_c != params_a
    assert (a - c).abs().mean() > 0.01


@pytest.mark.parametrize("family", PATTERN_FAMILIES)
def test_consumes_only_the_given_generator(family: str) -> None:
    global_state = torch.random.get_rng_state()
    generator = _gen(5)
    before = generator.get_state()
    render_pattern(family, 32, 32, generator)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # the global RNG is untouched
    assert not torch.equal(generator.get_state(), before)  # the draws came from the generator


@pytest.mark.parametrize("family", PATTERN_FAMILIES)
def test_params_reproduce_the_pattern(family: str) -> None:
    pattern, params = render_pattern(family, 40, 56, _gen(21))
    again = render_pattern_from_params(json.loads(json.dumps(params)), 40, 56)
    assert torch.equal(pattern, again)


@pytest.mark.parametrize("family", PATTERN_FAMILIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_resolution_independent(family: str, seed: int) -> None:
    high, params_high = render_pattern(family, 256, 256, _gen(seed))
    low, params_low = render_pattern(family, 128, 128, _gen(seed))
    assert params_high == params_low
    downsampled = F.interpolate(high, size=(128, 128), mode="area")
    assert (downsampled - low).abs().mean() < 0.1


def test_resolution_independent_non_square() -> None:
    for family in PATTERN_FAMILIES:
        high, _ = render_pattern(family, 128, 192, _gen(7))
        low, _ = render_pattern(family, 64, 96, _gen(7))
        assert (F.interpolate(high, size=(64, 96), mode="area") - low).abs().mean() < 0.1, family


@pytest.mark.parametrize("family", PATTERN_FAMILIES)
def test_coverage_sanity(family: str) -> None:
    means = []
    for seed in range(8):
        pattern, _ = render_pattern(family, 96, 96, _gen(100 + seed))
        assert pattern.std() > 0.05, f"seed {seed} gives a nearly constant pattern"
        means.append(pattern.mean().item())
    assert 0.05 <= sum(means) / len(means) <= 0.8
    assert min(means) > 0.01 and max(means) < 0.97


@pytest.mark.parametrize("family", PATTERN_FAMILIES)
def test_params_json_and_required_keys(family: str) -> None:
    _, params = render_pattern(family, 32, 32, _gen(9))
    assert REQUIRED_KEYS <= params.keys()
    assert len(params) > len(REQUIRED_KEYS)  # family-specific parameters are recorded too
    _assert_json_plain(params)
    assert json.loads(json.dumps(params)) == params
    assert params["family"] == family
    assert 0.0 <= params["rotation_deg"] < 360.0
    assert params["scale"] > 0
    assert isinstance(params["translate"], list) and len(params["translate"]) == 2
    assert all(-0.5 <= t <= 0.5 for t in params["translate"])


def test_random_frame_varies_across_draws() -> None:
    for family in PATTERN_FAMILIES:
        draws = [render_pattern(family, 8, 8, _gen(seed))[1] for seed in range(6)]
        assert len({round(d["rotation_deg"], 6) for d in draws}) == 6, family
        assert len({round(d["scale"], 6) for d in draws}) == 6, family
        assert len({tuple(d["translate"]) for d in draws}) == 6, family


def test_unknown_family_raises() -> None:
    with pytest.raises(ValueError) as info:
        render_pattern("polka_dots", 16, 16, _gen(0))
    for family in PATTERN_FAMILIES:
        assert family in str(info.value)
    with pytest.raises(ValueError):
        render_pattern_from_params({"family": "nope"}, 16, 16)


# ------------------------------------------------------------------------------------------------------------
# Ground truth for the stripe families
# ------------------------------------------------------------------------------------------------------------


def _rising_edges(profile: torch.Tensor) -> torch.Tensor:
    """Indices where a 1-D profile crosses 0.5 upwards."""
    above = profile > 0.5
    return torch.nonzero(~above[:-1] & above[1:]).flatten().float()


@pytest.mark.parametrize(("rotation", "axis"), [(0.0, "rows"), (90.0, "cols"), (180.0, "rows")])
def test_venetian_blinds_period_and_duty(rotation: float, axis: str) -> None:
    # 200 px short side: one pattern unit is 100 px at scale 1; period 0.2 -> 20 px, duty 0.35 -> 7 px of shadow.
    size, period, duty, scale = 200, 0.2, 0.35, 1.5
    params = _params(
        "venetian_blinds", rotation_deg=rotation, scale=scale, translate=[0.0, 0.0], period=period, duty_cycle=duty
    )
    pattern = render_pattern_from_params(params, size, size)[0, 0]
    along_normal = pattern[:, size // 3] if axis == "rows" else pattern[size // 3, :]
    across = pattern[size // 3, :] if axis == "rows" else pattern[:, size // 3]
    assert across.std() < 1e-4  # constant along the slats
    period_px = period * scale * size / 2  # 30 px
    edges = _rising_edges(along_normal)
    assert len(edges) >= 5
    assert torch.allclose(edges.diff(), torch.full((len(edges) - 1,), period_px), atol=1.01)
    whole = along_normal[: int(period_px) * 6]  # six whole periods
    assert abs(whole.mean().item() - duty) < 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_venetian_blinds_match_drawn_params(seed: int) -> None:
    size = 256
    _, params = render_pattern("venetian_blinds", size, size, _gen(seed))
    period_px = params["period"] * params["scale"] * size / 2
    assert abs(size / period_px - params["num_slats"]) < 1e-6  # num_slats is the count across the image
    upright = render_pattern_from_params(dict(params, rotation_deg=0.0), size, size)[0, 0]
    column = upright[:, size // 2]
    edges = _rising_edges(column)
    assert len(edges) >= 3
    assert abs(edges.diff().mean().item() - period_px) < 1.0
    whole = column[int(edges[0]) : int(edges[-1])]  # whole periods only
    assert abs(whole.mean().item() - params["duty_cycle"]) < 0.02
    # Rotation and translation keep the area fraction (up to the partial slats at the image border).
    rotated, _ = render_pattern("venetian_blinds", size, size, _gen(seed))
    assert abs(rotated.mean().item() - params["duty_cycle"]) < 0.5 / params["num_slats"] + 0.01


def test_stripes_keep_their_area_below_the_pixel_size() -> None:
    # Slats much finer than a pixel: the analytic box filter must still give duty_cycle everywhere (no aliasing).
    params = _params(
        "venetian_blinds", rotation_deg=17.0, scale=1.0, translate=[0.0, 0.0], period=0.013, duty_cycle=0.3
    )
    pattern = render_pattern_from_params(params, 32, 32)
    assert abs(pattern.mean().item() - 0.3) < 0.01
    assert pattern.std() < 0.05


def test_screen_coverage_matches_wire_fraction() -> None:
    # Axis-aligned screen with a whole number of meshes: shadow fraction = 1 - (1 - wire)^2.
    wire = 0.25
    params = _params("screen", rotation_deg=0.0, scale=1.0, translate=[0.0, 0.0], mesh_period=0.05, wire_fraction=wire)
    pattern = render_pattern_from_params(params, 200, 200)  # 10 px per mesh
    assert abs(pattern.mean().item() - (1 - (1 - wire) ** 2)) < 1e-3


def test_window_frame_bars_sit_on_pane_edges() -> None:
    params = _params(
        "window_frame",
        rotation_deg=0.0,
        scale=1.0,
        translate=[0.0, 0.0],
        columns=2,
        rows=2,
        pane_width=0.8,
        pane_height=0.8,
        bar_width=0.1,
        shear=0.0,
        outer_wall=True,
    )
    pattern = render_pattern_from_params(params, 200, 200)[0, 0]  # 100 px per unit, window spans [-0.8, 0.8]^2
    assert pattern[100, 100] > 0.99  # centre: where the muntins cross
    assert pattern[60, 60] < 0.01  # middle of the top-left pane
    assert pattern[100, 60] > 0.99 and pattern[60, 100] > 0.99  # on a horizontal / vertical bar
    assert pattern[5, 5] > 0.99  # outside the window: wall


def test_curtain_folds_are_smooth_and_span_the_range() -> None:
    for seed in range(4):
        pattern, _ = render_pattern("curtain_folds", 256, 256, _gen(seed))
        assert pattern.max() > 0.95 and pattern.min() < 0.05
        row_steps = pattern[0, 0].diff(dim=1).abs()
        assert row_steps.max() < 0.25  # continuous: no hard edges between neighbouring pixels


def test_device_argument_is_honoured() -> None:
    pattern, _ = render_pattern("voronoi", 16, 16, _gen(0), device=torch.device("cpu"))
    assert pattern.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    for family in PATTERN_FAMILIES:
        cpu, _ = render_pattern(family, 64, 64, _gen(4))
        gpu, _ = render_pattern(family, 64, 64, _gen(4), device="cuda")
        assert gpu.device.type == "cuda"
        assert (gpu.cpu() - cpu).abs().mean() < 1e-3, family


def test_frame_maps_back_to_pixels() -> None:
    from relight_datasets.ops.patterns import _make_frame

    frame = _make_frame(30, 50, rotation_deg=37.0, scale=1.3, translate=[0.1, -0.2], device="cpu")
    rows, cols = torch.tensor([0, 7, 29]), torch.tensor([0, 44, 13])
    got_cols, got_rows = frame.to_pixel(frame.u[rows, cols].tolist(), frame.v[rows, cols].tolist())
    assert torch.allclose(torch.tensor(got_cols), cols.float(), atol=1e-3)
    assert torch.allclose(torch.tensor(got_rows), rows.float(), atol=1e-3)
    assert frame.pixel == pytest.approx(2.0 / (30 * 1.3))
    # translate is a fraction of the image size: the pattern origin sits at (0.5 + tx, 0.5 + ty) of the image.
    origin_col, origin_row = frame.to_pixel([0.0], [0.0])
    assert origin_col[0] + 0.5 == pytest.approx(50 * 0.6) and origin_row[0] + 0.5 == pytest.approx(30 * 0.3)
