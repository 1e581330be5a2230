import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
import yaml

from curate.pipeline import PipelineError, load_pipeline, run_pipeline
from tests.conftest import REPO, write_jsonl

CURATE = [sys.executable, "-m", "curate.cli"]


def _write(tmp_path, steps, name="p"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "steps": steps}))
    return path


def _traces(tmp_path, n=400):
    rows = [{"prompt": f"Problem {i % 40}", "response": f"<think>step {i}</think>answer {i}", "teacher": f"T{i % 3}"}
            for i in range(n)]
    return write_jsonl(tmp_path / "traces.jsonl", rows)


def test_unknown_stage_and_unknown_key_fail_before_anything_runs(tmp_path):
    path = _write(tmp_path, [
        {"stage": "import", "config": {"paths": ["x.jsonl"], "colums": {}}},
        {"stage": "verify_nothing"},
    ])
    with pytest.raises(PipelineError) as err:
        load_pipeline(path)
    text = str(err.value)
    assert "step 1: unknown config key 'colums' for stage import" in text
    assert "step 2: unknown stage 'verify_nothing'" in text
    assert not (tmp_path / "runs").exists()


def test_pipeline_runs_chains_and_caches(tmp_path):
    data = _traces(tmp_path)
    path = _write(tmp_path, [
        {"stage": "import", "config": {"paths": [str(data)], "domain": "math"}},
        {"stage": "curate.testing:SlowCopyStage", "id": "copy", "config": {"seconds_per_batch": 0}},
    ])
    manifests = run_pipeline(load_pipeline(path), tmp_path / "run", progress=False)
    assert [m.step for m in manifests] == ["01-import", "02-copy"]
    assert manifests[1].rows_out == 400
    again = run_pipeline(load_pipeline(path), tmp_path / "run", progress=False)
    assert [m.started_at for m in again] == [m.started_at for m in manifests]
    assert (tmp_path / "run" / "pipeline.yaml").exists()


def test_sigkill_mid_stage_then_rerun_gives_exactly_the_uninterrupted_rows(tmp_path):
    # six input files -> six import shards -> six units for the slow stage
    files = []
    for f in range(6):
        rows = [{"prompt": f"Problem {i % 40}", "response": f"<think>s{f}-{i}</think>a", "teacher": "T"} for i in range(500)]
        files.append(str(write_jsonl(tmp_path / f"t{f}.jsonl", rows)))
    steps = [
        {"stage": "import", "config": {"paths": files, "domain": "math"}},
        {"stage": "curate.testing:SlowCopyStage", "id": "copy", "config": {"seconds_per_batch": 0.05}},
    ]
    path = _write(tmp_path, steps)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reference = tmp_path / "ref"
    subprocess.run([*CURATE, "run", str(path), "--out", str(reference), "--no-progress"], check=True, env=env,
                   cwd=tmp_path)
    run = tmp_path / "killed"
    proc = subprocess.Popen([*CURATE, "run", str(path), "--out", str(run), "--no-progress", "--workers", "2"],
                            env=env, cwd=tmp_path, start_new_session=True)
    step = run / "02-copy"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(step.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its workers, no cleanup
    proc.wait()
    finished = len(list(step.glob("part-*.parquet")))
    assert 2 <= finished < 6 and not (step / "_manifest.json").exists()
    subprocess.run([*CURATE, "run", str(path), "--out", str(run), "--no-progress"], check=True, env=env, cwd=tmp_path)
    got = pl.read_parquet(step / "part-*.parquet").sort("trace_id")
    want = pl.read_parquet(reference / "02-copy" / "part-*.parquet").sort("trace_id")
    assert got.height == 3000
    assert got.equals(want)
    manifest = yaml.safe_load((step / "_manifest.json").read_text())
    assert manifest["units_resumed"] == finished


def test_cli_query_stats_and_help(tmp_path):
    data = _traces(tmp_path, n=30)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([*CURATE, "import", str(data), "--out", str(tmp_path / "r"), "--domain", "math"], check=True,
                   env=env, capture_output=True)
    out = subprocess.run([*CURATE, "query", str(tmp_path / "r"), "select teacher, count(*) as n from traces group by 1 order by 1"],
                         check=True, env=env, capture_output=True, text=True).stdout
    assert "T0" in out and "│ 10" in out.replace("┃", "│")
    csv = subprocess.run([*CURATE, "query", str(tmp_path / "r"), "select count(*) as n from problems", "--format", "csv"],
                         check=True, env=env, capture_output=True, text=True).stdout
    assert csv.split() == ['"n"', "30"] or csv.split() == ["n", "30"]
    stats = subprocess.run([*CURATE, "stats", str(tmp_path / "r")], check=True, env=env, capture_output=True,
                           text=True, ).stdout
    assert "import" in stats and "30" in stats
    bad = subprocess.run([*CURATE, "query", str(tmp_path / "r"), "select nope from traces"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "nope" in bad.stdout + bad.stderr


def test_every_command_help_shows_an_example():
    from typer.testing import CliRunner

    from curate.cli import build_app

    app = build_app()
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0

    def commands(group, prefix):
        for info in group.registered_commands:
            yield [*prefix, info.name]
        for sub in group.registered_groups:
            yield from commands(sub.typer_instance, [*prefix, sub.name])

    names = list(commands(app, []))
    assert ["run"] in names and ["import"] in names and ["query"] in names
    for name in names:
        result = runner.invoke(app, [*name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"`curate {' '.join(name)} --help` shows no example"
