"""Multi-process builds: ``accelerate launch`` with two CPU processes, and ``--num-processes 2`` spawning its own,
give exactly the rows of a single-process build.

``accelerate launch --cpu --num_processes 2`` starts a single process unless an MPI hostfile is configured
(accelerate's simple launcher), so the launch here uses the torchrun launcher (``--multi_gpu``), which on a machine
without GPUs starts two CPU processes joined over gloo.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUILD = [str(REPO / "scripts" / "build.py")]
COMMON = ["--limit", "6", "--resolution", "128", "--chunk-size", "2", "--batch-size", "2", "--quiet", "--device", "cpu"]


def _rows(out: Path) -> list[dict]:
    rows = pq.read_table(sorted((out / "data").glob("*.parquet"))).to_pylist()
    return sorted(rows, key=lambda row: row["image_id"])


def _run(command: list[str], env_threads: str = "1") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": env_threads}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, faces_dir) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    _run([sys.executable, *BUILD, "--source", f"folder:{faces_dir}", "--out", str(out), *COMMON])
    return out


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_gives_the_single_process_rows(tmp_path, faces_dir, single_process):
    out = tmp_path / "launched"
    if torch.cuda.is_available():
        pytest.skip("needs a machine without GPUs: the torchrun launcher would put the processes on them")
    with socket.socket() as probe:  # a free port for the process group, so parallel runs never collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port)]
    result = _run([*launch, *BUILD, "--source", f"folder:{faces_dir}", "--out", str(out), *COMMON])
    assert result.stdout.count("images processed") == 1  # only the main process reports
    report = json.loads((out / "build_report.json").read_text())
    assert report["processes"] == 2 and report["attempted"] == 6
    assert not (out / ".work").exists()
    assert _rows(out) == _rows(single_process)


@pytest.mark.slow
def test_num_processes_spawns_workers_with_the_single_process_rows(tmp_path, faces_dir, single_process):
    out = tmp_path / "spawned"
    _run([sys.executable, *BUILD, "--source", f"folder:{faces_dir}", "--out", str(out), *COMMON,
          "--num-processes", "2"])
    report = json.loads((out / "build_report.json").read_text())
    assert report["processes"] == 2 and report["processed"] + sum(report["skipped"].values()) == 6
    assert _rows(out) == _rows(single_process)


@pytest.mark.slow
def test_a_dead_worker_is_reported_and_finished_chunks_are_kept(tmp_path, faces_dir):
    """A worker that cannot start (here: its copy of the source rows is missing) makes the build fail with
    WorkerFailed, while the chunks the other process finished stay on disk for the resume."""
    from relight_datasets.builder.launcher import ChunkJob, Rank, WorkerFailed, run_spawned
    from relight_datasets.builder.signals import StopSignals
    from relight_datasets.builder.sources import open_source
    from relight_datasets.builder.workdir import chunk_paths
    from relight_datasets.config import load_config

    work = tmp_path / "work"
    work.mkdir()
    job = ChunkJob(load_config("mvp", overrides=["resolution=64"]), {"train": 1.0}, "cpu", batch_size=1,
                   chunk_size=1, work=work)
    rows = open_source(f"folder:{faces_dir}", limit=2).rows
    with StopSignals() as stop, pytest.raises(WorkerFailed, match=r"worker process\(es\) \[1\] failed"):
        run_spawned(job, job.processor(Rank()), rows, 2, stop, progress=None)
    assert chunk_paths(work, 0)[1].is_file() and not chunk_paths(work, 1)[1].is_file()
