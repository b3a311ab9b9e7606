"""Publishing a built dataset folder to the Hugging Face Hub, tagged with its dataset version."""

from __future__ import annotations

import json
from pathlib import Path

from .build import REPORT


class PushError(ValueError):
    """The push was refused (one line, exit code 2)."""


def version_tag(version: str) -> str:
    return f"v{version}"


def push_to_hub(folder: Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                allow_existing_version: bool = False, api=None) -> str:
    """Upload ``folder`` (a finished build) to the dataset repo ``repo_id`` and tag the commit ``v<version>``.

    The token comes from the environment or ``huggingface-cli login``. Pushing a version whose tag already exists
    is refused unless ``allow_existing_version`` (then the tag moves to the new commit). ``revision``: a branch,
    created if missing. ``api``: an ``HfApi`` (injectable for tests). Returns the commit URL.
    """
    from huggingface_hub import HfApi

    report_path = Path(folder) / REPORT
    if not report_path.is_file():
        raise PushError(f"{folder}: not a finished build (no {REPORT}); nothing to push")
    report = json.loads(report_path.read_text())
    tag = version_tag(report["version"])
    api = api or HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    existing = {ref.name for ref in api.list_repo_refs(repo_id, repo_type="dataset").tags}
    if tag in existing and not allow_existing_version:
        raise PushError(
            f"{repo_id} already has dataset version {report['version']} (tag {tag}); bump output.dataset_version "
            f"(--set output.dataset_version=X.Y.Z) or pass --force-push to move the tag"
        )
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="dataset", revision=revision,
        commit_message=f"relight-datasets {report['package_version']}: dataset version {report['version']} "
        f"(config {report['config_fingerprint']}, {report['processed']} rows)",
        ignore_patterns=[".work/*", ".*"],
    )
    if tag in existing:
        api.delete_tag(repo_id, tag=tag, repo_type="dataset")
    api.create_tag(repo_id, tag=tag, revision=commit.oid, repo_type="dataset",
                   tag_message=f"dataset version {report['version']}, config {report['config_fingerprint']}")
    return commit.commit_url
