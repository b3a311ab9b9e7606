"""Publishing a built dataset folder to the Hugging Face Hub, tagged with its dataset version."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .workdir import REPORT


class PushError(ValueError):
    """The push was refused (one line, exit code 2)."""


def version_tag(version: str) -> str:
    return f"v{version}"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def check_push_target(repo_id: str, api=None) -> None:
    """Raise :class:`PushError` (one line) unless ``repo_id`` is a valid repo id, the Hub is not switched off
    (``HF_HUB_OFFLINE``), a token is available and the Hub accepts it. Creates nothing; meant to run before a build.
    ``api``: an ``HfApi`` (injectable for tests)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"--push-to-hub {repo_id!r}: not a valid repo id ({_first_line(error)})") from None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise PushError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be pushed; unset it or "
                        "build without --push-to-hub")
    token = get_token()
    if not token:
        raise PushError(f"--push-to-hub {repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    try:
        (api or HfApi()).whoami(token=token)
    except Exception as error:  # noqa: BLE001 - network, auth or server: the push cannot work; say why in one line
        raise PushError(f"--push-to-hub {repo_id}: the Hub cannot be reached or refuses the token "
                        f"({_first_line(error)})") from None


def push_to_hub(folder: Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                allow_existing_version: bool = False, api=None) -> str:
    """Upload ``folder`` (a finished build) to the dataset repo ``repo_id`` and tag the commit ``v<version>``.

    The token comes from the environment (``HF_TOKEN``) or ``hf auth login``. Pushing a version whose tag already exists
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
    try:
        return _upload_and_tag(folder, repo_id, report, tag, api, private, revision, allow_existing_version)
    except PushError:
        raise
    except Exception as error:  # noqa: BLE001 - network, auth or server: one line; the folder stays complete
        raise PushError(f"pushing {folder} to {repo_id} failed ({_first_line(error)}); the dataset is complete, "
                        "run the same command again to push it") from None


def _upload_and_tag(folder: Path, repo_id: str, report: dict, tag: str, api, private: bool, revision: str | None,
                    allow_existing_version: bool) -> str:
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
