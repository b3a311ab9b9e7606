"""Source hygiene on real files: what is an item, what is skipped and why, ids, order, limits and fingerprints."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, Features, Image, load_dataset
from PIL import Image as PILImage

from relight_datasets.builder.sources import SourceError, _hub_rows, check_source, open_source, parse_source
from relight_datasets.transforms.load import ImageSkip, decode_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def face_png(face_paths) -> bytes:
    """A real fixture portrait as a 48 px PNG."""
    buffer = io.BytesIO()
    PILImage.open(face_paths[0]).convert("RGB").resize((48, 48), PILImage.Resampling.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def ids(source) -> list[str]:
    return source.rows["image_id"]


def reasons(source) -> dict[str, str]:
    return {entry["image_id"]: entry["reason"] for entry in source.skipped}


def test_folder_ids_are_relative_paths_in_sorted_order(tmp_path, face_png):
    for name in ("b.png", "a/z.jpg", "a.png", "a/b/c.PNG"):
        write(tmp_path / name, face_png)
    write(tmp_path / "notes.txt", b"not an item")
    source = open_source(f"folder:{tmp_path}")
    assert ids(source) == ["a/b/c.PNG", "a/z.jpg", "a.png", "b.png"]  # sorted by path parts, as before
    assert source.skipped == []
    assert source.rows["input"][0] == {"bytes": None, "path": str((tmp_path / "a/b/c.PNG").resolve())}
    assert source.rows["source"] == ["folder"] * 4  # local paths stay out of the dataset


def test_hidden_files_and_vcs_folders_are_not_items(tmp_path, face_png, caplog):
    write(tmp_path / "face.png", face_png)
    write(tmp_path / ".hidden.png", face_png)
    for vcs in (".git", ".hg", ".svn"):
        write(tmp_path / vcs / "objects" / "blob.png", face_png)
    write(tmp_path / "sub" / ".cache" / "thumb.png", face_png)
    with caplog.at_level(logging.INFO, logger="relight_datasets.builder.sources"):
        source = open_source(str(tmp_path))
    assert ids(source) == ["face.png"] and source.skipped == []
    ignored = [record.getMessage() for record in caplog.records if "hidden" in record.getMessage()]
    assert len(ignored) == 1 and "ignored 5 hidden" in ignored[0]


def test_broken_and_looping_links_are_skipped_and_counted(tmp_path, face_png):
    write(tmp_path / "face.png", face_png)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "self.png").symlink_to(tmp_path / "self.png")
    (tmp_path / "ping.png").symlink_to(tmp_path / "pong.png")
    (tmp_path / "pong.png").symlink_to(tmp_path / "ping.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)  # a folder loop: never entered
    source = open_source(f"folder:{tmp_path}")
    assert ids(source) == ["face.png"]
    assert reasons(source) == {name: "broken_link" for name in ("dangling.png", "ping.png", "pong.png", "self.png")}


def test_one_file_reached_twice_in_a_folder_is_a_duplicate(tmp_path, face_png):
    write(tmp_path / "a.png", face_png)
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    os.link(tmp_path / "a.png", tmp_path / "c.png")
    write(tmp_path / "d.png", face_png)  # same bytes, another file: an item of its own
    source = open_source(f"folder:{tmp_path}")
    assert ids(source) == ["a.png", "d.png"]
    assert reasons(source) == {"b.png": "duplicate", "c.png": "duplicate"}


def test_a_file_name_that_is_not_utf8_is_processed_with_an_escaped_id(tmp_path, face_png):
    write(Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png")), face_png)
    write(tmp_path / "plain.png", face_png)
    source = open_source(f"folder:{tmp_path}")
    assert ids(source) == ["caf\\xe9.png", "plain.png"]
    assert source.rows["input"][0] == {"bytes": face_png, "path": None}
    assert decode_image(source.rows["input"][0], 64).shape == (48, 48, 3)


def test_limit_counts_skipped_items(tmp_path, face_png):
    write(tmp_path / "a.png", face_png)
    (tmp_path / "b.png").symlink_to(tmp_path / "missing.png")
    write(tmp_path / "c.png", face_png)
    write(tmp_path / "d.png", face_png)
    for limit, expected_rows, expected_skips in ((1, ["a.png"], 0), (2, ["a.png"], 1), (3, ["a.png", "c.png"], 1),
                                                 (10, ["a.png", "c.png", "d.png"], 1)):
        source = open_source(f"folder:{tmp_path}", limit=limit)
        assert ids(source) == expected_rows and len(source.skipped) == expected_skips
        assert len(source.rows) + len(source.skipped) == min(limit, 4)


def test_csv_spellings_of_one_file_are_one_item_and_duplicate_rows_are_counted(tmp_path, face_png):
    write(tmp_path / "imgs" / "x.png", face_png)
    write(tmp_path / "imgs" / "y.png", face_png)
    outside = write(tmp_path.parent / f"{tmp_path.name}-outside" / "z.png", face_png)
    entries = ["imgs/x.png", "imgs/../imgs/x.png", str(tmp_path / "imgs" / "x.png"), "./imgs/y.png", "imgs/y.png",
               str(outside), "imgs/nope.png"]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("image_path,caption\n" + "".join(f"{entry},a face\n" for entry in entries))
    source = open_source(f"csv:{csv_path}")
    assert ids(source) == ["imgs/x.png", "imgs/y.png", str(outside.resolve())]
    assert source.skipped == [{"image_id": "imgs/x.png", "reason": "duplicate"}] * 2 + [
        {"image_id": "imgs/y.png", "reason": "duplicate"}, {"image_id": "imgs/nope.png", "reason": "missing_file"}]
    assert len(set(ids(source))) == len(source.rows)


def test_csv_ids_follow_links_to_the_file(tmp_path, face_png):
    write(tmp_path / "imgs" / "x.png", face_png)
    (tmp_path / "alias").symlink_to(tmp_path / "imgs", target_is_directory=True)
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("image_path\nalias/x.png\nimgs/x.png\n")
    source = open_source(f"csv:{csv_path}")
    assert ids(source) == ["imgs/x.png"] and reasons(source) == {"imgs/x.png": "duplicate"}


def test_csv_with_a_bom_and_a_latin1_csv_are_read(tmp_path, face_png, caplog):
    write(tmp_path / "café.png", face_png)
    excel = tmp_path / "excel.csv"
    excel.write_bytes("image_path\r\ncafé.png\r\n".encode("utf-8-sig"))
    assert ids(open_source(f"csv:{excel}")) == ["café.png"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image_path\ncafé.png\n".encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="relight_datasets.builder.sources"):
        assert ids(open_source(f"csv:{latin}")) == ["café.png"]
    assert any("read as cp1252" in record.getMessage() for record in caplog.records)


def test_csv_that_is_neither_utf8_nor_cp1252_is_refused_in_one_line(tmp_path):
    undecodable = tmp_path / "odd.csv"
    undecodable.write_bytes(b"image_path\n\x81\x8d.png\n")  # invalid UTF-8, and bytes Windows-1252 leaves undefined
    for check in (check_source, open_source):
        with pytest.raises(SourceError, match=r"neither UTF-8 nor Windows-1252") as raised:
            check(f"csv:{undecodable}")
        assert "\n" not in str(raised.value)


def test_fingerprint_changes_exactly_when_the_item_list_does(tmp_path, face_png):
    for name in ("a.png", "b.png"):
        write(tmp_path / name, face_png)
    text = f"folder:{tmp_path}"
    first = open_source(text).fingerprint
    assert open_source(text).fingerprint == first
    write(tmp_path / "c.png", face_png)
    added = open_source(text).fingerprint
    (tmp_path / "c.png").unlink()
    assert open_source(text).fingerprint == first
    stat = (tmp_path / "b.png").stat()
    os.utime(tmp_path / "b.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = open_source(text).fingerprint
    (tmp_path / "b.png").unlink()
    removed = open_source(text).fingerprint
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    broken = open_source(text).fingerprint
    assert len({first, added, touched, removed, broken}) == 5
    assert open_source(text, limit=1).fingerprint != broken


def _stream(parquet: Path, images: list[bytes]):
    """A real streamed split with an image column, as ``load_dataset(..., streaming=True)`` gives for the Hub."""
    Dataset.from_dict({"image": [{"bytes": data, "path": None} for data in images]},
                      features=Features({"image": Image()})).to_parquet(str(parquet))
    stream = load_dataset("parquet", data_files=str(parquet), split="train", streaming=True)
    return stream.cast_column("image", Image(decode=False))


def test_hub_rows_are_fingerprinted_by_their_bytes(tmp_path, face_png):
    spec = parse_source("hf:someone/faces")
    altered = face_png[:-5] + bytes([face_png[-5] ^ 1]) + face_png[-4:]
    first = _hub_rows(_stream(tmp_path / "a.parquet", [face_png, face_png]), "image", spec, tmp_path / "cache_a")
    again = _hub_rows(_stream(tmp_path / "a.parquet", [face_png, face_png]), "image", spec, tmp_path / "cache_a")
    other = _hub_rows(_stream(tmp_path / "b.parquet", [face_png, altered]), "image", spec, tmp_path / "cache_b")
    assert ids(first) == ["train/0", "train/1"] and first.skipped == []
    assert first.rows["input"][1]["bytes"] == face_png and other.rows["input"][1]["bytes"] == altered
    assert again.fingerprint == first.fingerprint != other.fingerprint


def test_check_source_refuses_bad_sources_in_one_line_and_creates_nothing(tmp_path, face_png, monkeypatch):
    write(tmp_path / "faces" / "a.png", face_png)
    write(tmp_path / "empty" / "readme.txt", b"no images here")
    (tmp_path / "nocolumn.csv").write_text("path\na.png\n")
    (tmp_path / "binary.csv").write_bytes(face_png)
    (tmp_path / "nul.csv").write_bytes(b"image_path\n\x00a.png\n")
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    check_source(f"folder:{tmp_path / 'faces'}")
    check_source(str(tmp_path / "faces"))
    bad = {
        "fodler:faces": "expected folder:PATH",
        f"folder:{tmp_path / 'nope'}": "no such directory",
        f"folder:{tmp_path / 'empty'}": "no image files",
        f"csv:{tmp_path / 'nope.csv'}": "no such file",
        f"csv:{tmp_path / 'faces'}": "no such file",
        f"csv:{tmp_path / 'nocolumn.csv'}": "needs a column named image_path",
        f"csv:{tmp_path / 'binary.csv'}": "neither UTF-8 nor Windows-1252",
        f"csv:{tmp_path / 'nul.csv'}": "holds NUL characters",
        "hf:someone/faces": "HF_HUB_OFFLINE is set",
        "ffhq": "HF_HUB_OFFLINE is set",
    }
    for text, message in bad.items():
        with pytest.raises(SourceError, match=message) as raised:
            check_source(text)
        assert "\n" not in str(raised.value)
    assert sorted(tmp_path.rglob("*")) == before


def test_check_source_says_so_when_the_hub_is_unreachable(tmp_path):
    """A real process, online mode, pointed at a local port nobody listens on: no network is touched."""
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    script = ("from relight_datasets.builder.sources import SourceError, check_source\n"
              "try:\n    check_source('hf:someone/faces')\nexcept SourceError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            cwd=REPO, check=True)
    line, = result.stdout.splitlines()
    assert line.startswith("--source hf:someone/faces: cannot stream someone/faces (split train) from the Hugging Face")


@pytest.mark.parametrize(("size", "resolution", "usable"), [
    ((200, 5), 128, False),  # 5 px high from the start
    ((1000, 40), 128, False),  # 40 px high, 5 px once its long side is brought down to 128
    ((1000, 300), 128, True),  # 38 px high at 128
    ((40, 40), 128, True),
    ((512, 512), 20, True),  # a build resolution below MIN_SIDE still gets its images
])
def test_too_small_is_judged_at_the_build_resolution(tmp_path, face_paths, size, resolution, usable):
    path = tmp_path / "banner.png"
    PILImage.open(face_paths[0]).convert("RGB").resize(size, PILImage.Resampling.BILINEAR).save(path)
    if usable:
        decoded = decode_image({"path": str(path), "bytes": None}, resolution)
        assert max(decoded.shape[:2]) == min(resolution, max(size)) and decoded.dtype == np.uint8
    else:
        with pytest.raises(ImageSkip) as skipped:
            decode_image({"path": str(path), "bytes": None}, resolution)
        assert skipped.value.reason == "too_small"
