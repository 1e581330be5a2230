import json
import os
import subprocess
import sys

import polars as pl

from tests.conftest import REPO


def test_demo_runs_every_step_and_leaves_parquet_and_manifests(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "curate.cli", "demo", "--out", str(out), "--no-progress"], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name[:2].isdigit())
    assert steps == ["01-import", "02-verify_math", "03-verify_format", "04-dedup_exact", "05-dedup_minhash",
                     "06-dedup_semantic", "07-difficulty", "08-decontaminate", "09-select"]
    for step in steps:
        manifest = json.loads((out / step / "_manifest.json").read_text())
        assert manifest["status"] == "complete"
        assert list((out / step).glob("part-*.parquet"))
    scored = pl.read_parquet(out / "08-decontaminate" / "part-*.parquet")
    assert scored.height == 1080  # scoring stages never drop a row
    assert {"math__verdict", "format__ok", "exact__is_first", "minhash__cluster_id", "semantic__cluster_id", "difficulty__bucket", "decon__benchmark"} <= set(
        scored.columns)
    select = json.loads((out / "09-select" / "_manifest.json").read_text())
    funnel = select["summary"]["funnel"]
    assert funnel[0] == {"rule": "input", "rows_left": 1080}
    curated = pl.read_parquet(out / "09-select" / "part-*.parquet")
    assert funnel[-1]["rows_left"] == curated.height == select["rows_out"]
    # the policy's rules hold on the output
    assert (curated["math__verdict"] == "correct").all() and curated["format__ok"].all()
    assert curated.group_by("problem_id").len()["len"].max() <= 2
    # every demo problem is an AIME 2024 / AMC 2023 item, and decontamination says which
    assert dict(scored.group_by("source").agg(pl.col("decon__benchmark").first()).rows()) == {
        "aime24": "aime24", "amc23": "amc23"}
    assert scored["decon__benchmark"].null_count() == 0
    assert "curate query" in proc.stdout
    # the code half: every labelled variant gets its expected verdict in the sandbox
    code = pl.read_parquet(tmp_path / "demo-code" / "03-verify_format" / "part-*.parquet").with_columns(
        pl.col("trace_metadata").str.json_decode(pl.Struct({"expected_verdict": pl.Utf8})).struct.field(
            "expected_verdict"))
    assert code.height > 0 and (code["code__verdict"] == code["expected_verdict"]).all()
