"""Publishing a built dataset folder to the Hugging Face Hub, tagged with its dataset version."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .workdir import REPORT

logger = logging.getLogger(__name__)


class PushError(ValueError):
    """The push was refused (one line, exit code 2)."""


def version_tag(version: str) -> str:
    return f"v{version}"


def first_line(error: Exception) -> str:
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
        raise PushError(f"--push-to-hub {repo_id!r}: not a valid repo id ({first_line(error)})") from None
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
                        f"({first_line(error)})") from None


@dataclass(frozen=True)
class PushOptions:
    """Where ``--push-to-hub`` sends a build: the dataset repo, created ``private`` if missing, the branch
    (``revision``, created if missing; None: main), and whether an already tagged version may be pushed again."""

    repo_id: str
    private: bool = False
    revision: str | None = None
    allow_existing_version: bool = False


COMMIT_RETRY_SECONDS = (5.0, 30.0, 120.0)
"""Waits before the second, third and fourth try of a failed commit (then the push stops, to be resumed)."""


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
    push = PushOptions(repo_id, private, revision, allow_existing_version)
    api = api or HfApi()
    try:
        tagged = prepare_repo(api, push, report["version"])
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", revision=revision,
                                   commit_message=commit_message(report), ignore_patterns=[".work/*", ".*"])
        tag_version(api, push, report, commit.oid, tagged)
        return commit.commit_url
    except PushError:
        raise
    except Exception as error:  # noqa: BLE001 - network, auth or server: one line; the folder stays complete
        raise PushError(f"pushing {folder} to {repo_id} failed ({first_line(error)}); the dataset is complete, "
                        "run the same command again to push it") from None


def commit_message(report: dict) -> str:
    """The message of the commit that completes a dataset version (card, report, preview, or the whole folder)."""
    return (f"relight-datasets {report['package_version']}: dataset version {report['version']} "
            f"(config {report['config_fingerprint']}, {report['processed']} rows)")


def prepare_repo(api, push: PushOptions, version: str) -> bool:
    """Create the dataset repo and the branch when missing; refuse (:class:`PushError`) a version that is already
    tagged unless ``push.allow_existing_version``. Returns whether the tag exists (then :func:`tag_version` moves
    it). Hub errors propagate as they are."""
    tag = version_tag(version)
    api.create_repo(push.repo_id, repo_type="dataset", private=push.private, exist_ok=True)
    tagged = tag in {ref.name for ref in api.list_repo_refs(push.repo_id, repo_type="dataset").tags}
    if tagged and not push.allow_existing_version:
        raise PushError(
            f"{push.repo_id} already has dataset version {version} (tag {tag}); bump output.dataset_version "
            f"(--set output.dataset_version=X.Y.Z) or pass --force-push to move the tag"
        )
    if push.revision:
        api.create_branch(push.repo_id, branch=push.revision, repo_type="dataset", exist_ok=True)
    return tagged


def tag_version(api, push: PushOptions, report: dict, oid: str, tagged: bool) -> None:
    """Tag commit ``oid`` ``v<version>``, first deleting the tag when it exists (``tagged``)."""
    tag = version_tag(report["version"])
    if tagged:
        api.delete_tag(push.repo_id, tag=tag, repo_type="dataset")
    api.create_tag(push.repo_id, tag=tag, revision=oid, repo_type="dataset",
                   tag_message=f"dataset version {report['version']}, config {report['config_fingerprint']}")


def _transient(error: Exception) -> bool:
    """Whether a failed Hub call may succeed when tried again: no HTTP answer (connection, timeout), a server error,
    408 or 429. Other 4xx answers (no access, bad request) will not change."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    return status is None or status >= 500 or status in (408, 429)


def create_commit(api, push: PushOptions, operations: list, message: str, what: str):
    """``api.create_commit`` of ``operations`` to the push's repo and branch, tried again after each of
    :data:`COMMIT_RETRY_SECONDS` while the failure is transient (one log line per retry). Returns the
    ``CommitInfo``; raises :class:`PushError` (one line naming ``what``) once the tries are spent."""
    for attempt, wait in enumerate((*COMMIT_RETRY_SECONDS, None), 1):
        try:
            return api.create_commit(push.repo_id, operations, commit_message=message, repo_type="dataset",
                                     revision=push.revision)
        except Exception as error:  # noqa: BLE001 - network, auth or server: retried, then one line
            if wait is None or not _transient(error):
                tries = f"{attempt} tries" if attempt > 1 else "1 try"
                raise PushError(f"committing {what} to {push.repo_id} failed ({tries}: {first_line(error)}); "
                                "finished rows and commits are kept, run the same command to resume") from None
            logger.warning("committing %s failed (%s); trying again in %.0f s", what, first_line(error), wait)
            time.sleep(wait)
