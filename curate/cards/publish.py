"""Publish a run's export to the Hugging Face Hub as a dataset repository.

* The token comes from HF_TOKEN or the login cache (`hf auth login`), is checked before any work,
  and is never printed.
* Files are compared with the remote listing (LFS sha256 or git blob id), so re-publishing an
  unchanged run uploads nothing and an interrupted publish resumes where it stopped.
* Uploads go in batched commits (data shards first, the card last): each finished commit is a
  resume point, and no single request has to carry a whole large set.
* Remote files under the folders we manage (data/, plots/, policies/) that the export no longer
  has are deleted in the last commit, so old shards never leak into a config's glob.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from curate.cards.export import DEFAULT_MAX_SHARD_BYTES, Export, write_export
from curate.io import atomic_write_json, read_json

MANAGED_PREFIXES = ("data/", "plots/", "policies/")
MANAGED_FILES = ("README.md", "pipeline.yaml")
HASH_CACHE = "_publish_hashes.json"  # in the run folder: hashes of exported files by (size, mtime)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PublishError(RuntimeError):
    pass


@dataclass
class LocalFile:
    path_in_repo: str
    local: Path
    size: int
    sha256: str
    git_sha1: str  # git blob id: what the Hub lists for files not stored in LFS


@dataclass
class PublishResult:
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    commits: int = 0


def check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id or ""):
        raise PublishError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")


def resolve_token() -> str:
    """HF_TOKEN, else the cached login; a clear error (naming both) when there is neither."""
    from huggingface_hub import get_token

    token = (get_token() or "").strip()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                           "(nothing was built or uploaded)")
    return token


def make_api(token: str):
    from huggingface_hub import HfApi

    return HfApi(token=token)


# -- hashing ---------------------------------------------------------------------------------
def _hash(path: Path, size: int) -> tuple[str, str]:
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(f"blob {size}\0".encode())  # noqa: S324 - git's object id, not security
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def hash_files(export: Export, cache_file: Path | None = None) -> list[LocalFile]:
    cache: dict[str, Any] = read_json(cache_file) if cache_file and cache_file.exists() else {}
    out, fresh = [], {}
    for path in export.files():
        stat = path.stat()
        key = str(path.resolve())
        hit = cache.get(key)
        if hit and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            sha256, sha1 = hit[2], hit[3]
        else:
            sha256, sha1 = _hash(path, stat.st_size)
        fresh[key] = [stat.st_size, stat.st_mtime_ns, sha256, sha1]
        out.append(LocalFile(path.relative_to(export.folder).as_posix(), path, stat.st_size, sha256, sha1))
    if cache_file is not None:
        atomic_write_json(cache_file, fresh)
    return out


# -- planning --------------------------------------------------------------------------------
def _lfs_sha256(remote: Any) -> str | None:
    lfs = getattr(remote, "lfs", None)
    if lfs is None:
        return None
    return getattr(lfs, "sha256", None) or (lfs.get("sha256") if isinstance(lfs, dict) else None)


def is_unchanged(local: LocalFile, remote: Any) -> bool:
    if remote is None or getattr(remote, "size", local.size) != local.size:
        return False
    sha = _lfs_sha256(remote)
    if sha is not None:
        return sha == local.sha256
    return getattr(remote, "blob_id", None) == local.git_sha1


def remote_files(api: Any, repo_id: str, revision: str | None) -> dict[str, Any]:
    listing = api.list_repo_tree(repo_id, recursive=True, repo_type="dataset", revision=revision)
    return {item.path: item for item in listing if hasattr(item, "blob_id")}  # files, not folders


def _managed(path: str) -> bool:
    return path.startswith(MANAGED_PREFIXES) or path in MANAGED_FILES


def batches(files: list[LocalFile], *, max_files: int, max_bytes: int) -> list[list[LocalFile]]:
    out: list[list[LocalFile]] = []
    current: list[LocalFile] = []
    size = 0
    for f in files:
        if current and (len(current) >= max_files or size + f.size > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(f)
        size += f.size
    if current:
        out.append(current)
    return out


# -- commands --------------------------------------------------------------------------------
def dry_run(run: Path, target: Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[Path]:
    """Write exactly the files a publish would put in the repository into `target`."""
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        leftovers = [p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()]
        if not all(_managed(p) for p in leftovers):
            raise PublishError(f"dry-run folder {target} is not empty and was not written by a dry run; "
                               "choose an empty or new folder")
        shutil.rmtree(target)
    export = write_export(run, max_shard_bytes=max_shard_bytes)
    written = []
    for path in export.files():
        dest = target / path.relative_to(export.folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copyfile(path, dest)
        written.append(dest)
    return written


def publish(run: Path, repo_id: str, *, token: str, private: bool = True, revision: str | None = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, commit_max_files: int = 100,
            commit_max_bytes: int = 4 * 1024**3, message: str = "Publish curated traces with trace-curate",
            api: Any = None, progress: bool = True) -> PublishResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    check_repo_id(repo_id)
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = api if api is not None else make_api(token)
    export = write_export(run, max_shard_bytes=max_shard_bytes)
    local = hash_files(export, Path(run) / HASH_CACHE)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        remote = remote_files(api, repo_id, revision)
    except Exception as exc:  # network, permissions: say which repo, never the token
        raise PublishError(f"cannot reach dataset repository {repo_id}: {type(exc).__name__}: {exc}") from exc
    result = PublishResult()
    todo = []
    for f in local:
        if is_unchanged(f, remote.get(f.path_in_repo)):
            result.unchanged.append(f.path_in_repo)
        else:
            todo.append(f)
    wanted = {f.path_in_repo for f in local}
    stale = sorted(p for p in remote if _managed(p) and p not in wanted)
    card = [f for f in todo if f.path_in_repo == "README.md"]
    groups = batches([f for f in todo if f.path_in_repo != "README.md"], max_files=commit_max_files,
                     max_bytes=commit_max_bytes)
    if card or stale:  # the card (and clean-up) last: the Hub shows it only once the data is there
        groups.append(card)
    for number, group in enumerate(tqdm(groups, desc=f"publish {repo_id}", unit="commit", disable=not progress), 1):
        operations: list[Any] = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(f.local))
                                 for f in group]
        if number == len(groups):
            operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
        try:
            api.create_commit(repo_id, operations=operations, repo_type="dataset", revision=revision,
                              commit_message=f"{message} ({number}/{len(groups)})")
        except Exception as exc:
            raise PublishError(f"commit {number}/{len(groups)} to {repo_id} failed ({type(exc).__name__}: {exc}); "
                               f"{len(result.uploaded)} file(s) are already up; run the same command again "
                               "to resume") from exc
        result.uploaded += [f.path_in_repo for f in group]
        result.commits += 1
    result.deleted = stale if groups else []
    return result
