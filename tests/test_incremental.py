"""Incremental builds: raising ``--limit`` or adding files to a folder processes only the new rows and rewrites
the shards; the result equals a fresh build of all the images, row for row."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
FAST = ["--resolution", "96", "--segmenter", "classical", "--normals", "classical", "--quiet", "--chunk-size", "4",
        "--batch-size", "2"]


def build(source: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "build.py"), "--source", source, "--out", str(out),
                             *FAST, *flags], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def rows(out: Path) -> list[dict]:
    return pq.read_table(sorted((out / "data").glob("*.parquet"))).to_pylist()


def report(out: Path) -> dict:
    return json.loads((out / "build_report.json").read_text())


def test_raising_the_limit_processes_only_the_new_rows(tmp_path, faces_dir):
    source = f"folder:{faces_dir}"
    build(source, tmp_path / "grown", "--limit", "6")
    grown = build(source, tmp_path / "grown", "--limit", "12")
    assert report(tmp_path / "grown")["reused_rows"] == 6 and "6 reused from the build it extends" in grown.stdout
    build(source, tmp_path / "fresh", "--limit", "12")
    assert rows(tmp_path / "grown") == rows(tmp_path / "fresh")
    assert report(tmp_path / "grown")["processed"] == 12


def test_files_added_to_a_folder_are_the_only_ones_processed(tmp_path, face_paths):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in face_paths[:3]:
        shutil.copy(path, folder / path.name)
    build(f"folder:{folder}", tmp_path / "out")
    for path in face_paths[3:5]:
        shutil.copy(path, folder / path.name)
    build(f"folder:{folder}", tmp_path / "out")
    assert report(tmp_path / "out")["reused_rows"] == 3 and report(tmp_path / "out")["processed"] == 5
    build(f"folder:{folder}", tmp_path / "fresh")
    assert rows(tmp_path / "out") == rows(tmp_path / "fresh")


def test_other_settings_are_still_refused(tmp_path, faces_dir):
    source = f"folder:{faces_dir}"
    build(source, tmp_path / "out", "--limit", "2")
    refused = subprocess.run([sys.executable, str(REPO / "scripts" / "build.py"), "--source", source, "--out",
                              str(tmp_path / "out"), *FAST, "--limit", "4", "--seed", "9"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "other settings" in refused.stderr
