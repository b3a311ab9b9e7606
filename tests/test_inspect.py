"""``relight-inspect``: the page of a real build, opened in a real headless Chromium (Debian's ``chromium``), must
show every thumbnail; a broken image must be caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """The browser; outside CI a machine without it skips (CI installs it in .ci/run and must not skip)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI (.ci/run installs it)")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    return found


def browse(page: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def images_rendered(page: Path, profile: Path) -> tuple[int, int]:
    """``(rendered, total)`` images of ``page`` after load, as the page's own script counts them in the DOM."""
    dom = browse(page, profile, "--dump-dom").stdout
    marker = dom.split('data-images-ok="', 1)[1].split('"', 1)[0]
    rendered, total = marker.split("/")
    return int(rendered), int(total)


def inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relight_datasets.inspection", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def page(tmp_path_factory, faces_dir) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    built = subprocess.run([sys.executable, str(REPO / "scripts" / "build.py"), "--source", f"folder:{faces_dir}",
                            "--limit", "4", "--resolution", "128", "--out", str(root / "build"), "--quiet",
                            "--layout", "compact", "--preset", "full"], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    result = inspect(str(root / "build"), "-o", str(root / "page.html"), "--rows", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 of 4 rows" in result.stdout
    return root / "page.html"


def test_the_page_is_self_contained_and_shows_every_image_column(page):
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere
    for column in ("input", "mask", "albedo", "degraded", "composite", "normals"):  # compact: two regenerated
        assert text.count(f'alt="{column}"') == 3
    for chart in ("light directions", "key light colour", "ambient", "exposure", "mask_coverage",
                  "segmentation_method", "normals_method", "light_setup", "skip reasons"):
        assert chart in text


def test_every_thumbnail_renders_in_a_real_browser(page, tmp_path):
    assert images_rendered(page, tmp_path / "profile") == (18, 18)
    screenshot = tmp_path / "page.png"
    browse(page, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1400,1400")
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float32)
    grid = pixels[700:1300, 200:1300]  # where the first rows' thumbnails are
    assert grid.std() > 20  # photos, not a blank page


def test_a_broken_image_is_caught(page, tmp_path):
    broken = tmp_path / "broken.html"
    text = page.read_text()
    start = text.index("data:image/jpeg;base64,") + len("data:image/jpeg;base64,")
    broken.write_text(text[:start] + "AAAA" + text[start + 4000:])  # the first thumbnail's bytes cut short
    assert images_rendered(broken, tmp_path / "profile") == (17, 18)


@pytest.mark.parametrize(("target", "needle"), [("missing", "no such folder"), ("empty", "not a dataset folder")])
def test_what_is_not_a_build_is_one_line_and_exit_2(tmp_path, target, needle):
    (tmp_path / "empty").mkdir()
    result = inspect(str(tmp_path / target), "-o", str(tmp_path / "page.html"))
    assert result.returncode == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
