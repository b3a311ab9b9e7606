"""``--push-to-hub`` uploads shards while the build runs (issue 15, item 2): several commits, bounded local disk, and
a build stopped by a dead connection resumes without recomputing rows or committing a shard twice.

Builds run on 12 fixture faces at 96 px with the classical stages, one row per chunk, two splits, shards of one or two
rows, against a stand-in for ``HfApi`` that keeps the repo's files in memory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from conftest import save_resized_faces
from datasets import load_dataset
from huggingface_hub import CommitOperationAdd, CommitOperationDelete

from relight_datasets.builder import hub as hub_module
from relight_datasets.builder.stream import PENDING
from relight_datasets.cli import main

OPTIONS = ["--resolution", "96", "--segmenter", "classical", "--normals", "classical", "--quiet", "--chunk-size", "1",
           "--batch-size", "1", "--splits", "train=0.75,test=0.25", "--min-shards", "4"]
ROWS = 12


class HubRepo:
    """Stands in for ``huggingface_hub.HfApi`` at the HTTP boundary: holds the repo's files (path -> bytes), tags and
    commits, and fails the commit tries numbered in ``failing`` (1-based, counted over the object's life) as a dead
    connection would. At every try it notes the rows of the Parquet files in the build's ``out`` folder (``local``:
    those kept for the preview apart), then takes ``seconds``. With a ``store`` folder the files and commits persist
    there (another process picks them up), and each try is announced in ``store/trying``."""

    def __init__(self, out: Path, store: Path | None = None):
        self.out, self.store, self.files, self.tags = out, store, {}, {}
        self.commits: list[dict] = []
        if store is not None and (store / "commits.json").is_file():
            self.commits = json.loads((store / "commits.json").read_text())
            self.files = {path.relative_to(store / "repo").as_posix(): path.read_bytes()
                          for path in (store / "repo").rglob("*") if path.is_file()}
        self.tries = 0
        self.failing: set[int] = set()
        self.local: list[dict] = []
        self.seconds = 0.0

    def whoami(self, token=None):
        return {"name": "tester"}

    def create_repo(self, repo_id, **kwargs):
        return None

    def create_branch(self, repo_id, **kwargs):
        return None

    def list_repo_refs(self, repo_id, **kwargs):
        return SimpleNamespace(tags=[SimpleNamespace(name=tag) for tag in self.tags])

    def list_repo_files(self, repo_id, **kwargs):
        return sorted(self.files)

    def create_tag(self, repo_id, *, tag, revision, **kwargs):
        self.tags[tag] = revision

    def delete_tag(self, repo_id, *, tag, **kwargs):
        del self.tags[tag]

    def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
        self.tries += 1
        parquet = [path for path in self.out.rglob("*.parquet") if "preview" not in path.parts]
        self.local.append({"rows": sum(map(rows_in, parquet)),
                           "shards": sum(path.parent.name == "data" for path in parquet),
                           "preview_rows": sum(map(rows_in, self.out.glob(".work/stream/preview/data/*.parquet")))})
        if self.store is not None:
            (self.store / "trying").write_text(str(self.tries))
        time.sleep(self.seconds)
        if self.tries in self.failing:
            raise ConnectionError("connection reset by peer")
        added = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations
                 if isinstance(op, CommitOperationAdd)}
        deleted = [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)]
        self.files.update(added)
        for name in deleted:
            del self.files[name]
        self.commits.append({"added": sorted(added), "deleted": deleted, "message": commit_message})
        if self.store is not None:
            self.dataset(self.store / "repo")
            (self.store / "commits.json").write_text(json.dumps(self.commits))
        oid = f"c{len(self.commits)}"
        return SimpleNamespace(oid=oid, commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/{oid}")

    def added(self) -> list[str]:
        return [name for commit in self.commits for name in commit["added"]]

    def dataset(self, folder: Path) -> Path:
        """The repo's files written out into ``folder``."""
        for name, data in self.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return folder


def rows_in(path: Path) -> int:
    """Rows of a Parquet file; 0 for one the build deleted meanwhile (it runs on while a commit is made)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except FileNotFoundError:
        return 0


def split_rows(folder: Path) -> dict[str, list[dict]]:
    """Each split's rows, its shards read in name order."""
    rows: dict[str, list[dict]] = {}
    for path in sorted((folder / "data").glob("*.parquet")):
        rows.setdefault(path.name.split("-")[0], []).extend(pq.read_table(path).to_pylist())
    return rows


@pytest.fixture(scope="module")
def faces(tmp_path_factory, faces_dir) -> Path:
    return save_resized_faces(faces_dir, tmp_path_factory.mktemp("faces"), ROWS, 96)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, faces) -> Path:
    """The same build without --push-to-hub: every shard written locally."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["--source", str(faces), "--out", str(out), *OPTIONS, "--max-shard-size", "1KB"]) == 0
    return out


@pytest.fixture
def streamed(tmp_path, monkeypatch):
    """``build(*extra)``: the build with --push-to-hub org/pairs against ``hub`` (a :class:`HubRepo`); no waits
    between commit tries."""
    import huggingface_hub
    import transformers.utils.hub  # noqa: F401 - annotates with HfApi when imported: before the stand-in replaces it

    out = tmp_path / "out"
    hub = HubRepo(out)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: hub)
    monkeypatch.setattr(hub_module, "COMMIT_RETRY_SECONDS", (0.0, 0.0, 0.0))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # checked before the build; every call goes to the stand-in
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    def build(faces: Path, *extra: str) -> int:
        return main(["--source", str(faces), "--out", str(out), *OPTIONS, "--max-shard-size", "1KB",
                     "--push-to-hub", "org/pairs", *extra])

    return SimpleNamespace(build=build, hub=hub, out=out)


def test_shards_are_committed_one_by_one_and_equal_a_local_build(streamed, faces, reference, tmp_path, capsys):
    assert streamed.build(faces) == 0
    hub = streamed.hub
    shards = [name for name in hub.added() if name.startswith("data/")]
    assert len(shards) == len(set(shards)) == ROWS  # one row per shard (1KB shards), each sent once
    assert all(len(commit["added"]) == 1 for commit in hub.commits[:-1])
    assert hub.commits[-1]["added"] == ["README.md", "build_report.json", "preview.png"]
    assert hub.tags == {"v0.1.0": f"c{len(hub.commits)}"}
    assert "pushed to https://huggingface.co/datasets/org/pairs/commit/" in capsys.readouterr().out

    published = hub.dataset(tmp_path / "published")
    assert split_rows(published) == split_rows(reference)
    report = json.loads((published / "build_report.json").read_text())
    assert sorted(shard["name"] for shard in report["shards"]) == sorted(shards)
    assert len(load_dataset(str(published), split="test")) == report["splits"]["test"]
    assert sorted(p.name for p in streamed.out.iterdir()) == [".lock", "README.md", "build_report.json",
                                                              "preview.png"]

    assert streamed.build(faces) == 0  # the same command again: nothing to do, nothing sent
    assert "already pushed to org/pairs" in capsys.readouterr().out and hub.tries == len(hub.commits)


def test_local_disk_holds_a_bounded_number_of_rows(streamed, faces):
    streamed.hub.seconds = 0.3  # a slow upload: processing runs ahead until PENDING shards wait
    assert streamed.build(faces) == 0
    # train: 9 source rows in shards of 1 row, test: 3; chunks of 1 row: the bound in relight_datasets.builder.stream
    shard_rows, chunk_rows, splits, processes = 1, 1, 2, 1
    bound = splits * (shard_rows + chunk_rows) + 2 * PENDING * shard_rows + (processes + 1) * chunk_rows
    local = streamed.hub.local
    assert max(seen["rows"] for seen in local) <= bound < ROWS
    assert max(seen["shards"] for seen in local) <= PENDING
    assert max(seen["preview_rows"] for seen in local) <= splits * 6  # output.preview_rows per split


@pytest.mark.parametrize("failing", [3, ROWS + 1], ids=["shard", "final"])
def test_a_build_stopped_by_a_dead_connection_resumes_without_sending_a_shard_twice(streamed, faces, reference,
                                                                                    tmp_path, capsys, failing):
    hub = streamed.hub
    hub.failing = set(range(failing, failing + 4))  # that commit fails on every try
    assert streamed.build(faces) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "committing " in error and "failed (4 tries: connection reset by peer)" in error
    committed = hub.added()
    assert len(committed) == failing - 1 and not hub.tags
    assert not (streamed.out / "build_report.json").exists()

    hub.failing = set()
    assert streamed.build(faces) == 0
    sent = hub.added()
    assert len(sent) == len(set(sent)) and sent[: failing - 1] == committed  # nothing committed twice
    assert len([name for name in sent if name.startswith("data/")]) == ROWS
    report = json.loads((hub.dataset(tmp_path / "published") / "build_report.json").read_text())
    assert report["resumed_rows"] >= min(failing, ROWS)  # the rows finished before the stop were not computed again
    assert split_rows(tmp_path / "published") == split_rows(reference)


KILLED_BUILD = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import transformers.utils.hub  # before the stand-in replaces HfApi
import huggingface_hub
from test_streaming_upload import OPTIONS, HubRepo
from relight_datasets.cli import main
os.environ["HF_HUB_OFFLINE"] = "0"  # conftest, imported above, set it
hub = HubRepo(Path(sys.argv[3]), Path(sys.argv[4]))
hub.seconds = 0.5
huggingface_hub.HfApi = lambda: hub
sys.exit(main(["--source", sys.argv[2], "--out", sys.argv[3], *OPTIONS, "--max-shard-size", "1KB",
               "--push-to-hub", "org/pairs"]))
"""


def test_a_build_killed_during_a_commit_resumes(streamed, faces, reference, tmp_path):
    store = tmp_path / "hub"
    store.mkdir()
    command = [sys.executable, "-c", KILLED_BUILD, str(Path(__file__).parent), str(faces), str(streamed.out),
               str(store)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_TOKEN": "hf_test_token"})
    trying = store / "trying"
    deadline = time.time() + 240
    while time.time() < deadline and not (trying.is_file() and trying.read_text() == "3"):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # in the middle of the third commit
    process.wait(timeout=30)
    before = HubRepo(streamed.out, store)
    assert len(before.commits) == 2 and not (streamed.out / "build_report.json").exists()

    hub = streamed.hub
    hub.files, hub.commits = before.files, list(before.commits)
    assert streamed.build(faces) == 0
    sent = hub.added()
    assert len(sent) == len(set(sent)) and len([name for name in sent if name.startswith("data/")]) == ROWS
    assert split_rows(hub.dataset(tmp_path / "published")) == split_rows(reference)


def test_a_commit_that_fails_once_is_tried_again(streamed, faces, reference, tmp_path):
    streamed.hub.failing = {2}
    assert streamed.build(faces) == 0
    hub = streamed.hub
    assert hub.tries == len(hub.commits) + 1
    shards = [name for name in hub.added() if name.startswith("data/")]
    assert len(shards) == len(set(shards)) == ROWS
    assert split_rows(hub.dataset(tmp_path / "published")) == split_rows(reference)


def test_a_tagged_version_is_refused_before_any_work(streamed, faces, capsys):
    streamed.hub.tags = {"v0.1.0": "c0"}
    assert streamed.build(faces) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "already has dataset version 0.1.0" in error
    assert streamed.hub.tries == 0 and not streamed.out.exists()


@pytest.fixture(scope="module")
def with_a_broken_image(tmp_path_factory, faces) -> Path:
    folder = tmp_path_factory.mktemp("broken")
    for path in faces.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "0001.png").write_bytes(b"not a png")  # sorts second: train or test, skipped as unreadable
    return folder


def test_a_shard_whose_rows_were_all_skipped_is_left_out(streamed, with_a_broken_image, tmp_path):
    local = tmp_path / "local"
    assert main(["--source", str(with_a_broken_image), "--out", str(local), *OPTIONS, "--max-shard-size", "1KB"]) == 0
    assert streamed.build(with_a_broken_image) == 0
    published = streamed.hub.dataset(tmp_path / "published")
    report = json.loads((published / "build_report.json").read_text())
    assert report["skipped"] == {"unreadable_image": 1} and len(report["shards"]) == ROWS
    assert split_rows(published) == split_rows(local)


def test_a_build_of_two_processes_streams_the_same_rows(streamed, faces, reference, tmp_path):
    assert streamed.build(faces, "--num-processes", "2", "--device", "cpu") == 0
    shards = [name for name in streamed.hub.added() if name.startswith("data/")]
    assert len(shards) == len(set(shards)) == ROWS
    assert split_rows(streamed.hub.dataset(tmp_path / "published")) == split_rows(reference)
