"""`curate publish`: token handling, the dry-run folder, and the upload path against a fake Hub
(which files each commit carries, nothing re-uploaded, resume after a failed commit)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from huggingface_hub.hf_api import RepoFile
from typer.testing import CliRunner

from curate.cards import publish as pub
from curate.cards.cli import register
from tests.test_cards_fixtures import build_run, split_card

SECRET = "hf_test_secret_token_never_printed"


class FakeHub:
    """Just enough of HfApi: a dataset repo whose listing reflects the commits made to it. Parquet
    and PNG files are stored as LFS (sha256 listed), text files as git blobs (sha1 listed)."""

    def __init__(self, fail_on_commit: int | None = None):
        self.files: dict[str, RepoFile] = {}
        self.commits: list[dict] = []
        self.repos: list[dict] = []
        self.fail_on_commit = fail_on_commit

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **_):
        self.repos.append({"repo_id": repo_id, "repo_type": repo_type, "private": private, "exist_ok": exist_ok})

    def list_repo_tree(self, repo_id, path_in_repo=None, *, recursive=False, repo_type=None, revision=None, **_):
        assert recursive and repo_type == "dataset"
        return list(self.files.values())

    def put(self, path: str, data: bytes) -> None:
        if path.endswith((".parquet", ".png")):
            sha = hashlib.sha256(data).hexdigest()
            self.files[path] = RepoFile(path=path, size=len(data), oid="0" * 40,
                                        lfs={"size": len(data), "oid": sha, "pointerSize": 134})
        else:
            oid = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
            self.files[path] = RepoFile(path=path, size=len(data), oid=oid)

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, revision=None, **_):
        operations = list(operations)
        if self.fail_on_commit is not None and len(self.commits) + 1 == self.fail_on_commit:
            self.fail_on_commit = None
            raise ConnectionError("connection reset by peer")
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                self.put(op.path_in_repo, Path(op.path_or_fileobj).read_bytes())
            elif isinstance(op, CommitOperationDelete):
                del self.files[op.path_in_repo]
        self.commits.append({"message": commit_message, "repo_type": repo_type,
                             "add": [o.path_in_repo for o in operations if isinstance(o, CommitOperationAdd)],
                             "delete": [o.path_in_repo for o in operations if isinstance(o, CommitOperationDelete)]})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("publish"))


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(pub, "make_api", lambda token: fake)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return fake


def _cli(*args):
    """Our commands on an app of their own (the same `register` the real CLI calls)."""
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publish_without_token_fails_clearly_before_any_work(run, tmp_path, monkeypatch):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))

    def no_work(*args, **kwargs):
        raise AssertionError("publish built the export before checking the token")

    monkeypatch.setattr(pub, "write_export", no_work)
    monkeypatch.setattr(pub, "make_api", no_work)
    result = _cli("publish", run, "--repo-id", "org/name")
    assert result.exit_code == 2
    assert "error: no Hugging Face token: set HF_TOKEN or run `hf auth login`" in _flat(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback


def test_publish_commits_data_first_card_last_private_and_never_prints_the_token(run, hub):
    result = _cli("publish", run, "--repo-id", "my-org/small-traces", "--commit-files", "3")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert hub.repos == [{"repo_id": "my-org/small-traces", "repo_type": "dataset", "private": True, "exist_ok": True}]
    export = _tree(run / "export")
    published = [p for p in export if not p.endswith(".json")]  # the shard-cut state stays local
    added = [p for c in hub.commits for p in c["add"]]
    assert sorted(added) == sorted(published)
    assert all(len(c["add"]) <= 3 for c in hub.commits)
    assert hub.commits[-1]["add"] == ["README.md"]
    is_data = [p.startswith("data/") for p in added]
    assert is_data == sorted(is_data, reverse=True)  # every shard goes up before plots and card
    assert [c["message"] for c in hub.commits] == [
        f"Publish curated traces with trace-curate ({i}/{len(hub.commits)})" for i in range(1, len(hub.commits) + 1)]
    # the Hub now holds exactly the export's bytes
    for path, data in export.items():
        if path in hub.files:
            assert hub.files[path].size == len(data)

    commits = len(hub.commits)
    again = _cli("publish", run, "--repo-id", "my-org/small-traces")
    assert again.exit_code == 0, again.output
    assert "already up to date" in _flat(again.output)
    assert len(hub.commits) == commits  # an unchanged run uploads nothing


def test_publish_resumes_after_a_failed_commit_and_removes_stale_shards(run, hub):
    hub.put("data/curated/train-00007-of-00009.parquet", b"old shard of an earlier version")
    hub.put("notes/keep-me.txt", b"a file the user added on the Hub")
    hub.fail_on_commit = 2
    with pytest.raises(pub.PublishError, match="commit 2/.* failed .* run the same command again to resume"):
        pub.publish(run, "my-org/small-traces", token=SECRET, api=hub, commit_max_files=2, progress=False)
    first = [p for c in hub.commits for p in c["add"]]
    assert len(first) == 2

    result = pub.publish(run, "my-org/small-traces", token=SECRET, api=hub, commit_max_files=2, progress=False)
    assert sorted(result.unchanged) == sorted(first)  # the finished commit is not uploaded again
    assert not set(result.uploaded) & set(first)
    assert result.deleted == ["data/curated/train-00007-of-00009.parquet"]
    assert hub.commits[-1]["delete"] == result.deleted and hub.commits[-1]["add"] == ["README.md"]
    assert "notes/keep-me.txt" in hub.files
    assert sorted(hub.files) == sorted([*first, *result.uploaded, "notes/keep-me.txt"])


def test_a_changed_file_is_the_only_one_uploaded_again(run, hub):
    pub.publish(run, "my-org/small-traces", token=SECRET, api=hub, progress=False)
    before = len(hub.commits)
    hub.put("plots/funnel.png", b"an older rendering")
    result = pub.publish(run, "my-org/small-traces", token=SECRET, api=hub, progress=False)
    assert result.uploaded == ["plots/funnel.png"] and result.deleted == []
    assert [c["add"] for c in hub.commits[before:]] == [["plots/funnel.png"]]


def test_dry_run_writes_exactly_what_publish_uploads_and_loads_with_datasets(run, hub, tmp_path):
    import datasets

    target = tmp_path / "upload"
    result = _cli("publish", run, "--repo-id", "my-org/small-traces", "--dry-run", target)
    assert result.exit_code == 0, result.output
    assert hub.commits == [] and hub.repos == []  # no network in a dry run
    pub.publish(run, "my-org/small-traces", token=SECRET, api=hub, progress=False)
    dry = _tree(target)
    assert sorted(dry) == sorted(p for c in hub.commits for p in c["add"])
    export = _tree(run / "export")
    assert all(export[p] == data for p, data in dry.items())

    meta, _ = split_card((target / "README.md").read_text())
    expected = {"curated": pq.ParquetDataset(sorted((run / "07-select").glob("part-*.parquet"))).read().num_rows,
                "negatives": pq.ParquetDataset(sorted((run / "07-select" / "negatives").glob("*.parquet"))).read().num_rows}
    assert [c["config_name"] for c in meta["configs"]] == list(expected)
    for config in meta["configs"]:
        loaded = datasets.load_dataset(str(target), config["config_name"], cache_dir=str(tmp_path / "cache"))
        assert list(loaded) == [f["split"] for f in config["data_files"]] == ["train"]
        assert loaded["train"].num_rows == expected[config["config_name"]]
    default = datasets.load_dataset(str(target), cache_dir=str(tmp_path / "cache"))
    assert default["train"].num_rows == expected["curated"]

    # a second dry run into the same folder replaces it; a foreign folder is refused
    assert _cli("publish", run, "--repo-id", "my-org/small-traces", "--dry-run", target).exit_code == 0
    assert _tree(target) == dry
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    refused = _cli("publish", run, "--repo-id", "my-org/small-traces", "--dry-run", foreign)
    assert refused.exit_code == 2 and "is not empty and was not written by a dry run" in _flat(refused.output)


def test_bad_repo_id_is_refused(run, hub):
    result = _cli("publish", run, "--repo-id", "no-slash")
    assert result.exit_code == 2 and "--repo-id must look like ORG/NAME, got 'no-slash'" in _flat(result.output)
    assert hub.commits == []
