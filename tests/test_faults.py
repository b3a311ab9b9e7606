"""Faults injected into real builds (issue 14): each build either finishes with the rows of an uninterrupted build,
or stops with one line and the right exit code, and never loses or misreports a finished dataset.

Builds run on 8 fixture faces at 128 px, two rows per chunk, so that a build has several chunks to interrupt.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from conftest import save_resized_faces
from datasets import load_dataset
from PIL import Image

from relight_datasets.builder import build as build_module
from relight_datasets.cli import main

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["--resolution", "128", "--chunk-size", "2", "--batch-size", "2", "--quiet"]
INTERRUPTED = "relight-build: interrupted; run the same command to resume"


def build(source: Path | str, out: Path, *extra: str) -> int:
    return main(["--source", str(source), "--out", str(out), *OPTIONS, *extra])


def rows_of(out: Path) -> list[dict]:
    """All rows of all shards, in shard order, with image bytes (comparable row by row)."""
    return [row for path in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def error_line(err: str) -> str:
    """The one error line of a failed command (and proof that there is exactly one, with no traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("relight-build: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def finished_chunks(out: Path) -> int:
    return len(list((out / ".work").glob("chunk-*.json")))


@pytest.fixture(scope="module")
def faces(tmp_path_factory, faces_dir) -> Path:
    return save_resized_faces(faces_dir, tmp_path_factory.mktemp("faces"), 8, 128)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, faces) -> Path:
    """An uninterrupted build: what every resumed build must equal, row for row."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert build(faces, out) == 0
    return out


@contextmanager
def disk_full_after(chunks: int, monkeypatch):
    """The disk fills up after ``chunks`` chunk files: ``pq.write_table`` (what writes each chunk) raises ENOSPC
    from then on. No small filesystem can be mounted in a test, so the error is injected at that call."""
    real_write_table = pq.write_table
    calls = 0

    def write_table(table, where, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > chunks:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real_write_table(table, where, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pq, "write_table", write_table)
        yield


def interrupted_build(faces: Path, out: Path, monkeypatch, chunks: int = 2) -> None:
    """A build of ``faces`` into ``out`` stopped (by a full disk) after ``chunks`` finished chunks."""
    with disk_full_after(chunks, monkeypatch):
        assert build(faces, out) == 2
    assert finished_chunks(out) == chunks


def start_build(source: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, str(REPO / "scripts" / "build.py"), "--source", str(source), "--out", str(out),
               *OPTIONS]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_chunks(process: subprocess.Popen, out: Path, count: int = 1) -> None:
    deadline = time.time() + 120
    while finished_chunks(out) < count and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None and finished_chunks(out) >= count, "the build did not get going"


# ------------------------------------------------------------------------------------------------ concurrent builds


def test_a_second_build_into_the_same_out_is_refused_naming_the_holder(tmp_path, faces, reference, capsys):
    """Two real processes: a build running in a subprocess, a second one (this process) into the same --out. Then
    the first is killed (``kill -9``): its lock dies with it, and the second resumes to the reference rows."""
    out = tmp_path / "out"
    first = start_build(faces, out)
    try:
        wait_for_chunks(first, out)
        assert build(faces, out) == 2
        line = error_line(capsys.readouterr().err)
        assert f"is in use by another build (pid {first.pid} on" in line
    finally:
        first.kill()
        first.wait(timeout=60)
    assert (out / ".lock").exists() and not (out / "build_report.json").exists()
    assert build(faces, out) == 0
    assert rows_of(out) == rows_of(reference)


# ------------------------------------------------------------------------------------------------------- overwrite


def test_overwrite_with_a_misspelt_source_keeps_the_finished_dataset(tmp_path, faces, reference, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    assert build(f"folder:{tmp_path / 'no-such-folder'}", out, "--overwrite") == 2
    assert "no such directory" in error_line(capsys.readouterr().err)
    assert rows_of(out) == rows_of(reference) and not (out / ".work").exists()


def test_overwrite_replaces_a_build_only_once_the_new_one_is_complete_and_keeps_unknown_files(
        tmp_path, faces, reference, capsys, monkeypatch):
    """A finished build with a Hub clone's ``.gitattributes`` is a build (same command: nothing to do); a failed
    --overwrite (disk full) leaves it whole; a finished one replaces it and keeps the unknown file."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    assert build(faces, out) == 0
    assert "already holds this build" in capsys.readouterr().out

    with disk_full_after(1, monkeypatch):
        assert build(faces, out, "--overwrite", "--seed", "3") == 2
    assert "disk full" in error_line(capsys.readouterr().err)
    assert rows_of(out) == rows_of(reference)
    assert len(load_dataset(str(out), split="train")) == 8

    assert build(faces, out, "--overwrite", "--seed", "3") == 0
    assert {row["seed"] for row in rows_of(out)} == {3} and len(rows_of(out)) == 8
    assert (out / ".gitattributes").is_file() and not (out / ".work").exists()


# ---------------------------------------------------------------------------------------------------------- resume


def test_resuming_after_the_source_changed_is_refused_naming_the_change(tmp_path, faces, reference, capsys,
                                                                        monkeypatch):
    source = tmp_path / "faces"
    shutil.copytree(faces, source)
    out = tmp_path / "out"
    with disk_full_after(2, monkeypatch):
        assert build(source, out) == 2
    shutil.copy(source / sorted(p.name for p in source.iterdir())[0], source / "added.png")
    capsys.readouterr()
    assert build(source, out) == 2
    line = error_line(capsys.readouterr().err)
    assert "the source changed (1 item(s) added, 0 removed)" in line and "fingerprint" not in line

    (source / "added.png").unlink()
    assert build(source, out) == 0
    report = json.loads((out / "build_report.json").read_text())
    assert report["resumed_rows"] == 4 and report["attempted"] == 8
    assert [row["image_id"] for row in rows_of(out)] == [row["image_id"] for row in rows_of(reference)]


def test_other_settings_are_refused_naming_the_keys_that_differ(tmp_path, faces, capsys, monkeypatch):
    out = tmp_path / "out"
    interrupted_build(faces, out, monkeypatch)
    capsys.readouterr()
    assert build(faces, out, "--seed", "9", "--set", "degradation.soft_shading.ambient=[0.5,0.6]") == 2
    line = error_line(capsys.readouterr().err)
    assert "config.seed: 0 -> 9" in line
    assert "config.degradation.soft_shading.ambient: [0.32, 0.7] -> [0.5, 0.6]" in line


def test_a_truncated_chunk_is_redone_with_one_line(tmp_path, faces, reference, monkeypatch, caplog):
    out = tmp_path / "out"
    interrupted_build(faces, out, monkeypatch)
    chunk = out / ".work" / "chunk-00000.parquet"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    assert build(faces, out) == 0
    assert any("chunk 0: its Parquet file is truncated" in record.getMessage() for record in caplog.records)
    assert json.loads((out / "build_report.json").read_text())["resumed_rows"] == 2
    assert rows_of(out) == rows_of(reference)


def test_flipped_bytes_in_a_chunk_are_found_and_redone(tmp_path, faces, reference, monkeypatch, caplog):
    out = tmp_path / "out"
    interrupted_build(faces, out, monkeypatch)
    chunk = out / ".work" / "chunk-00001.parquet"
    data = bytearray(chunk.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])  # inside an image's bytes
    chunk.write_bytes(bytes(data))
    assert build(faces, out) == 0
    assert any("chunk 1: its Parquet file's checksum differs" in record.getMessage() for record in caplog.records)
    rows = rows_of(out)
    assert rows == rows_of(reference)
    for row in rows:
        for column in ("input", "mask", "albedo", "degraded", "composite", "normals"):
            Image.open(io.BytesIO(row[column]["bytes"])).load()


def test_disk_full_is_one_line_and_the_finished_chunks_resume(tmp_path, faces, reference, monkeypatch, capsys):
    out = tmp_path / "out"
    interrupted_build(faces, out, monkeypatch)
    line = error_line(capsys.readouterr().err)
    assert "disk full while writing" in line and "run the same command" in line
    assert not [p for p in (out / ".work").iterdir() if ".tmp-" in p.name]
    assert build(faces, out) == 0
    assert json.loads((out / "build_report.json").read_text())["resumed_rows"] == 4
    assert rows_of(out) == rows_of(reference)


# -------------------------------------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_build_cleanly_and_it_resumes(tmp_path, faces, reference, signum, code):
    out = tmp_path / "out"
    process = start_build(faces, out)
    wait_for_chunks(process, out)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert INTERRUPTED in err and "Traceback" not in err and "skipped" not in err
    finished = finished_chunks(out)
    assert 1 <= finished < 4 and not (out / "build_report.json").exists()
    assert build(faces, out) == 0
    assert json.loads((out / "build_report.json").read_text())["resumed_rows"] == 2 * finished
    assert rows_of(out) == rows_of(reference)


def test_a_second_ctrl_c_exits_at_once_without_an_abort(tmp_path, faces):
    out = tmp_path / "out"
    process = start_build(faces, out)
    wait_for_chunks(process, out)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert INTERRUPTED in err and "Traceback" not in err and "terminate called" not in err
    assert not (out / "build_report.json").exists() and finished_chunks(out) >= 1


# ------------------------------------------------------------------------------------------------ empty and failed


def test_an_empty_split_is_left_out_and_the_folder_loads(tmp_path, faces, capsys):
    out = tmp_path / "out"
    assert build(faces, out, "--limit", "1", "--splits", "train=0.5,test=0.5") == 0
    report = json.loads((out / "build_report.json").read_text())
    (empty,) = report["empty_splits"]
    assert f"empty splits left out: {empty}" in capsys.readouterr().out
    loaded = load_dataset(str(out))
    assert set(loaded) == set(report["splits"]) - {empty} and sum(map(len, loaded.values())) == 1


def test_a_folder_with_no_person_exits_1_and_writes_no_dataset(tmp_path, capsys):
    blank = tmp_path / "blank"
    blank.mkdir()
    for index in range(3):
        Image.new("RGB", (128, 128), (200, 200, 200)).save(blank / f"{index}.png")
    out = tmp_path / "out"
    assert build(blank, out) == 1
    captured = capsys.readouterr()
    line = error_line(captured.err)
    assert "none of the 3 images was processed (skipped: no_person 3" in line and "nothing was written" in line
    assert "dataset written" not in captured.out
    assert not (out / "data").exists() and not (out / "README.md").exists()
    assert not (out / "build_report.json").exists()


def test_every_row_failing_exits_1_naming_the_first_error(tmp_path, faces, capsys):
    out = tmp_path / "out"
    assert build(faces, out, "--limit", "2", "--set", "degradation.weights.soft_shading=.inf") == 1
    line = error_line(capsys.readouterr().err)
    assert "(skipped: processing_error 2; first error: " in line and "RuntimeError" in line
    assert not (out / "data").exists()


def test_an_error_rate_above_the_limit_fails_and_a_higher_limit_publishes(tmp_path, faces, capsys,
                                                                         pipeline_failing_for):
    """One image in four makes the pipeline fail (injected: the pipeline raises whenever that id is in its batch,
    so the build's own row-by-row retry isolates it)."""
    source = tmp_path / "faces"
    shutil.copytree(faces, source, ignore=lambda _, names: sorted(names)[4:])
    bad = sorted(p.name for p in source.iterdir())[1]
    pipeline_failing_for(bad)
    out = tmp_path / "out"
    assert build(source, out) == 1
    line = error_line(capsys.readouterr().err)
    assert f"1 of 4 images failed with processing_error, more than --max-error-rate 0.01; first error: {bad}: " \
           f"ValueError: cannot segment {bad}" in line
    assert not (out / "data").exists()
    assert build(source, out, "--max-error-rate", "0.5") == 0
    report = json.loads((out / "build_report.json").read_text())
    assert report["processed"] == 3 and report["skipped"] == {"processing_error": 1}
    assert report["resumed_rows"] == 4 and report["images_per_second"] == 0  # only rows processed by this run count


# ---------------------------------------------------------------------------------------------------- pre-checks


def test_failed_prechecks_create_nothing_and_the_corrected_command_runs(tmp_path, faces, capsys):
    out = tmp_path / "out"
    assert build(f"folder:{tmp_path / 'typo'}", out) == 2
    assert "no such directory" in error_line(capsys.readouterr().err)
    assert build(faces, out, "--segmenter", "sam3", "--sam3-model", str(tmp_path / "no-model")) == 2
    assert "sam3" in error_line(capsys.readouterr().err).lower()
    assert not out.exists()
    assert build(faces, out, "--limit", "2") == 0


@pytest.mark.parametrize(("repo_id", "env", "message"), [
    ("not a repo id!", {}, "not a valid repo id"),
    ("org/pairs", {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ("org/pairs", {"HF_HUB_OFFLINE": "0"}, "no Hugging Face token"),
])
def test_push_target_problems_stop_the_build_before_any_work(tmp_path, faces, capsys, monkeypatch, repo_id, env,
                                                              message):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    assert build(faces, out, "--push-to-hub", repo_id) == 2
    assert message in error_line(capsys.readouterr().err)
    assert not out.exists()


@contextmanager
def read_only(folder: Path):
    """``folder`` made unwritable: by its mode, or for root (whom modes do not stop) by the immutable attribute."""

    def writable() -> bool:
        try:
            (folder / ".probe").touch()
        except OSError:
            return False
        (folder / ".probe").unlink()
        return True

    folder.chmod(0o555)
    immutable = writable() and shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        if writable():
            pytest.skip("cannot make a folder read-only here")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_read_only_or_file_blocked_out_is_one_line(tmp_path, faces, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        assert build(faces, locked / "out") == 2
        assert "cannot write there" in error_line(capsys.readouterr().err)
        assert build(faces, locked) == 2
        assert "cannot write there" in error_line(capsys.readouterr().err)
    (tmp_path / "a-file").write_text("x")
    assert build(faces, tmp_path / "a-file") == 2
    assert "exists and is not a directory" in error_line(capsys.readouterr().err)
    assert build(faces, tmp_path / "a-file" / "out") == 2
    assert "cannot write there" in error_line(capsys.readouterr().err)


def test_too_little_disk_space_is_refused_before_any_work(tmp_path, faces, capsys, monkeypatch):
    """The free space is reported as 1 MB (``shutil.disk_usage`` answers so): 8 rows at 1024 px need far more."""
    monkeypatch.setattr(build_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=10**6))
    out = tmp_path / "out"
    assert main(["--source", str(faces), "--out", str(out), "--quiet", "--resolution", "1024"]) == 2
    assert "only 0.0 GB free" in error_line(capsys.readouterr().err)
    assert not out.exists()


def test_a_binary_config_names_the_file(tmp_path, faces, capsys):
    config = tmp_path / "config.yaml"
    config.write_bytes(bytes(range(256)))
    assert build(faces, tmp_path / "out", "--config", str(config)) == 2
    assert f"--config {config}: not a UTF-8 text file" in error_line(capsys.readouterr().err)
