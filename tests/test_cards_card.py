"""`curate card`: the Hub metadata, and every number in the card recomputed here from the Parquet
with polars (independently of the DuckDB queries that wrote it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import polars as pl
import pyarrow.parquet as pq
import pytest
import typer
from PIL import Image

from curate.cards import export as export_module
from curate.cards import fmt
from curate.cards.cli import register
from curate.cards.export import write_export
from curate.cards.layout import CardError
from curate.cards.metadata import is_non_commercial, size_category
from curate.cards.plots import PLOT_SIZES, PLOTS
from tests.test_cards_fixtures import TEACHERS, build_run, card_tables, split_card, trace_rows

MIXED = {"synth-a": "apache-2.0", "synth-nc": "cc-by-nc-4.0"}
UNCHECKED = ["no_reference", "no_tests", "sandbox_error", "no_code"]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("mixed"), licenses=MIXED)


@pytest.fixture(scope="module")
def mixed_card(mixed_run):
    export = write_export(mixed_run)
    meta, body = split_card(export.card.read_text())
    return export, meta, body, card_tables(body)


def _read(step_dir) -> pl.DataFrame:
    return pl.read_parquet(step_dir / "part-*.parquet")


def _steps(run):
    return sorted(p for p in run.iterdir() if p.is_dir() and re.match(r"\d\d-", p.name))


def test_hub_metadata_declares_licence_configs_and_categories(mixed_run, mixed_card):
    export, meta, _body, _tables = mixed_card
    curated = _read(mixed_run / "07-select")
    # two sources, two licences: "other" plus the list, and the non-commercial one is flagged
    assert meta["license"] == "other"
    assert meta["source_licenses"] == ["apache-2.0", "cc-by-nc-4.0"]
    assert "cc-by-nc-4.0" in meta["license_details"]
    assert "non-commercial" in meta["tags"]
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == [size_category(curated.height)] == ["n<1K"]
    assert meta["source_datasets"] == ["synth-a", "synth-nc"]
    assert meta["configs"] == [
        {"config_name": "curated", "default": True,
         "data_files": [{"split": "train", "path": "data/curated/*.parquet"}]},
        {"config_name": "negatives", "data_files": [{"split": "train", "path": "data/negatives/*.parquet"}]},
    ]
    assert sorted(p.name for p in export.plots.values()) == ["contamination.png", "funnel.png", "pass_rate.png",
                                                             "token_lengths.png"]
    for name in ("curated", "negatives"):
        assert pq.ParquetDataset(export.folder / "data" / name).read().num_rows == {
            "curated": curated.height, "negatives": _read(mixed_run / "07-select" / "negatives").height}[name]


def test_every_number_in_the_card_matches_the_parquet(mixed_run, mixed_card):
    _export, _meta, body, tables = mixed_card
    scored = _read(mixed_run / "06-decontaminate")
    curated = _read(mixed_run / "07-select")
    negatives = _read(mixed_run / "07-select" / "negatives")
    checked: set[tuple[str, int]] = set()

    def table(section: str, index: int = 0) -> list[dict[str, str]]:
        checked.add((section, index))
        return tables[section][index]

    # summary line and configs
    assert (f"**{curated.height}** curated traces of **{curated['problem_id'].n_unique()}** problems from "
            f"**{curated['teacher'].n_unique()}** teachers (math), selected from **{scored.height}** scored") in body
    assert table("Summary") == [
        {"config": "curated", "split": "train", "rows": fmt.num(curated.height), "files": "`data/curated/*.parquet`"},
        {"config": "negatives", "split": "train", "rows": fmt.num(negatives.height),
         "files": "`data/negatives/*.parquet`"}]

    # sources and licences
    want = []
    for (source, lic), group in sorted(scored.group_by(["source", "license"]), key=lambda kv: kv[0]):
        cur = curated.filter((pl.col("source") == source) & (pl.col("license") == lic))
        want.append({"source": source, "licence": lic, "domain": "math", "problems": fmt.num(group["problem_id"].n_unique()),
                     "traces (scored)": fmt.num(group.height), "curated problems": fmt.num(cur["problem_id"].n_unique()),
                     "curated traces": fmt.num(cur.height)})
    assert table("Sources and licences") == want
    published = pl.concat([curated.select("license"), negatives.select("license")])
    assert table("Sources and licences", 1) == [
        {"licence": lic, "rows": fmt.num(n)} for lic, n in sorted(published["license"].value_counts().rows())]

    # teachers: traces, contribution, sampling params as recorded
    want = []
    for teacher in sorted(TEACHERS):
        group = scored.filter(pl.col("teacher") == teacher)
        common = sorted(group["sampling_params"].value_counts().rows(), key=lambda r: (-r[1], r[0]))  # most used first
        params = "; ".join(json.dumps(json.loads(p), separators=(",", ":"), sort_keys=True) for p, _n in common)
        n_cur = curated.filter(pl.col("teacher") == teacher).height
        want.append({"teacher": teacher, "backend": "import", "sampling params": params,
                     "traces (scored)": fmt.num(group.height), "curated": fmt.num(n_cur),
                     "share of curated": fmt.pct(n_cur / curated.height)})
    assert table("Teachers") == want

    # funnel per step: rows out of each step's shards, rows in from the step before
    want, previous = [], len(trace_rows(MIXED))
    for step in _steps(mixed_run):
        out = _read(step).height
        rejected = pq.read_table(step / "_rejects.parquet").num_rows
        want.append({"step": step.name, "stage": json.loads((step / "_manifest.json").read_text())["stage"],
                     "rows in": fmt.num(previous), "rows out": fmt.num(out), "rejected": fmt.num(rejected),
                     "removed": fmt.num(previous - out - rejected)})
        previous = out
    assert table("Funnel") == want

    # selection rules, recomputed from the score columns in the policy's order
    rules = [("verified", pl.col("math__verdict") == "correct"), ("format_ok", pl.col("format__ok")),
             ("not_contaminated", pl.col("decon__benchmark").is_null()), ("survivors", pl.col("exact__is_first"))]
    alive, rows_left, per_teacher = scored, [], {t: {} for t in TEACHERS}
    for rule, keep in rules:
        kept = alive.filter(keep.fill_null(False))
        for teacher in TEACHERS:
            per_teacher[teacher][rule] = (alive.filter(pl.col("teacher") == teacher).height
                                          - kept.filter(pl.col("teacher") == teacher).height)
        rows_left.append({"rule": rule, "rows removed": fmt.num(alive.height - kept.height),
                          "rows left": fmt.num(kept.height)})
        alive = kept
    rows_left.append({"rule": "per_problem", "rows removed": fmt.num(alive.height - curated.height),
                      "rows left": fmt.num(curated.height)})
    assert table("Funnel", 1) == rows_left
    want = []
    for teacher in sorted(TEACHERS):
        n_cur = curated.filter(pl.col("teacher") == teacher).height
        capped = alive.filter(pl.col("teacher") == teacher).height - n_cur
        want.append({"teacher": teacher, "traces": fmt.num(scored.filter(pl.col("teacher") == teacher).height),
                     **{r: fmt.num(per_teacher[teacher][r]) for r, _ in rules},
                     "per_problem": fmt.num(capped), "kept": fmt.num(n_cur)})
    assert table("Funnel", 2) == want

    # verification rates per teacher and domain, verdict counts
    want = []
    for (teacher, domain), g in sorted(scored.group_by(["teacher", "domain"]), key=lambda kv: kv[0]):
        n_checked = g.filter(pl.col("math__verdict").is_not_null() & ~pl.col("math__verdict").is_in(UNCHECKED)).height
        n_ok = g.filter(pl.col("math__verdict") == "correct").height
        want.append({"teacher": teacher, "domain": domain, "traces": fmt.num(g.height), "checked": fmt.num(n_checked),
                     "verified": fmt.num(n_ok), "pass rate": fmt.pct(n_ok / g.height),
                     "pass rate (checked)": fmt.pct(n_ok / n_checked)})
    assert table("Verification") == want
    counts = sorted(scored["math__verdict"].value_counts().rows(), key=lambda r: (-r[1], r[0]))
    assert table("Verification", 1) == [{"column": "math__verdict", "verdict": v, "traces": fmt.num(n)}
                                        for v, n in counts]

    # format flags
    flags = [c for c, t in scored.schema.items() if c.startswith("format__") and t == pl.Boolean]
    assert table("Format checks") == [
        {"column": c, "true": fmt.num(scored[c].sum()), "false": fmt.num((~scored[c]).sum()),
         "null": fmt.num(scored[c].null_count())} for c in flags]

    # exact-duplicate clusters: traces by response, problems by prompt
    sizes = scored.group_by("exact__trace_group").len()["len"]
    prompt_sizes = scored.group_by("exact__problem_group").agg(pl.col("problem_id").n_unique())["problem_id"]
    assert table("Deduplication") == [
        {"method": "exact", "cluster column": "exact__trace_group", "unit": "traces",
         "clusters (size > 1)": fmt.num((sizes > 1).sum()), "items in clusters": fmt.num(sizes.filter(sizes > 1).sum()),
         "largest cluster": fmt.num(sizes.max()), "duplicates": fmt.num((~scored["exact__is_first"]).sum())},
        {"method": "exact prompts", "cluster column": "exact__problem_group", "unit": "problems",
         "clusters (size > 1)": fmt.num((prompt_sizes > 1).sum()),
         "items in clusters": fmt.num(prompt_sizes.filter(prompt_sizes > 1).sum()),
         "largest cluster": fmt.num(prompt_sizes.max()), "duplicates": fmt.DASH}]
    assert (sizes > 1).sum() == 1  # the copied response

    # contamination: benchmarks, hits and examples
    hits = scored.filter(pl.col("decon__benchmark").is_not_null())
    assert hits.height > 0
    assert (f"Benchmarks checked: `bench`. {hits.height} scored traces ({hits['problem_id'].n_unique()} problems) "
            "overlap a benchmark item.") in body
    assert table("Contamination") == [{
        "benchmark": "bench", "traces flagged": fmt.num(hits.height), "problems flagged": fmt.num(hits["problem_id"].n_unique()),
        "methods": ", ".join(sorted(hits["decon__method"].unique())),
        "in curated set": fmt.num(curated.filter(pl.col("decon__benchmark").is_not_null()).height)}]
    examples = table("Contamination", 1)
    by_problem = {p: g for (p,), g in hits.group_by(["problem_id"])}
    assert sorted(e["problem"] for e in examples) == sorted(by_problem)
    for e in examples:
        g = by_problem[e["problem"]]
        assert e["score"] == fmt.score(g["decon__score"].max())
        assert e["benchmark item"] in set(g["decon__item_id"])
        assert e["prompt (start)"] == " ".join(g["prompt"][0][:160].split())

    # difficulty buckets (problem level) and pass rate per teacher x bucket
    problems = scored.group_by("problem_id").agg(pl.col("difficulty__bucket").first(), pl.col("difficulty__pass_rate").first())
    want = []
    for bucket in [b for b in ("trivial", "easy", "medium", "hard", "unsolved") if b in set(problems["difficulty__bucket"])]:
        p = problems.filter(pl.col("difficulty__bucket") == bucket)
        want.append({"bucket": bucket, "problems": fmt.num(p.height),
                     "traces (scored)": fmt.num(scored.filter(pl.col("difficulty__bucket") == bucket).height),
                     "mean pass rate": fmt.pct(p["difficulty__pass_rate"].mean()),
                     "curated traces": fmt.num(curated.filter(pl.col("difficulty__bucket") == bucket).height)})
    assert table("Difficulty") == want
    grid = table("Difficulty", 1)
    for row in grid:
        for bucket, cell in row.items():
            if bucket == "teacher":
                continue
            g = scored.filter((pl.col("teacher") == row["teacher"]) & (pl.col("difficulty__bucket") == bucket))
            assert cell == f"{fmt.pct((g['math__verdict'] == 'correct').mean())} ({fmt.num(g.height)})"

    # token lengths of the curated set (the teachers' completion_tokens here)
    def stats(name, s):
        return {"teacher": name, "traces": fmt.num(s.len()), "mean": fmt.tokens(s.mean()),
                "median": fmt.tokens(s.median()), "p90": fmt.tokens(s.quantile(0.9, "linear")),
                "max": fmt.num(s.max()), "total": fmt.num(s.sum())}
    want = [stats(t, g["completion_tokens"]) for (t,), g in sorted(curated.group_by(["teacher"]), key=lambda kv: kv[0])]
    assert table("Token lengths") == [*want, stats("all teachers", curated["completion_tokens"])]

    # reproduce: every step with the config hash its manifest recorded
    assert table("Reproduce") == [
        {"step": s.name, "stage": m["stage"], "stage version": m["version"], "config hash": f"`{m['config_hash']}`"}
        for s in _steps(mixed_run) for m in [json.loads((s / "_manifest.json").read_text())]]
    assert (mixed_run / "pipeline.yaml").read_text().strip() in body

    # nothing left unchecked
    assert checked == {(section, i) for section, ts in tables.items() for i in range(len(ts))}


def test_plots_are_pngs_of_their_fixed_size(mixed_card):
    export = mixed_card[0]
    for name, path in export.plots.items():
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == PLOT_SIZES[name]
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 20  # drawn, not blank
        assert f"![{PLOTS[name][0]}](plots/{name}.png)" in mixed_card[2]  # linked from the card


def test_card_is_byte_identical_when_written_again(mixed_run, mixed_card, tmp_path, monkeypatch):
    first = mixed_card[0]
    before = {p: p.read_bytes() for p in first.files()}
    again = write_export(mixed_run, tmp_path / "again")  # drawn from scratch elsewhere
    assert [p.relative_to(first.folder) for p in first.files()] == [p.relative_to(again.folder) for p in again.files()]
    for a, b in zip(first.files(), again.files(), strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name

    # into the same folder, unchanged facts are not drawn again
    def no_drawing(facts):
        raise AssertionError("plots re-drawn for unchanged facts")

    monkeypatch.setattr(export_module, "render_plots", no_drawing)
    same = write_export(mixed_run)
    assert {p: p.read_bytes() for p in same.files()} == before


def test_non_commercial_source_licence_propagates_and_absent_stages_leave_no_section(tmp_path):
    run = build_run(tmp_path, licenses={"synth-a": "cc-by-nc-4.0", "synth-nc": "CC-BY-NC-4.0"}, steps="import")
    export = write_export(run)
    meta, body = split_card(export.card.read_text())
    assert meta["license"] == "cc-by-nc-4.0"
    assert "non-commercial" in meta["tags"]
    assert "**Non-commercial:** rows under `cc-by-nc-4.0`" in body
    # import only: no verifier, filter or selection columns, so none of their sections or plots
    tables = card_tables(body)
    assert set(tables) == {"Summary", "Sources and licences", "Teachers", "Funnel", "Token lengths", "Reproduce"}
    assert [c["config_name"] for c in meta["configs"]] == ["curated"]
    assert sorted(export.plots) == ["funnel", "token_lengths"]
    imported = _read(run / "01-import")
    assert tables["Summary"][0][0]["rows"] == fmt.num(imported.height)


def test_licence_helpers():
    assert is_non_commercial("cc-by-nc-sa-4.0") and is_non_commercial("my-noncommercial-licence")
    assert not is_non_commercial("apache-2.0") and not is_non_commercial("cc-by-4.0")
    assert [size_category(n) for n in (0, 999, 1000, 54_321, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]


def test_large_shards_are_split_and_keep_every_row(mixed_run, tmp_path):
    export = write_export(mixed_run, tmp_path / "small-shards", max_shard_bytes=8 * 1024)
    negatives = export.data["negatives"]
    source = sorted((mixed_run / "07-select" / "negatives").glob("part-*.parquet"))
    assert len(negatives) > len(source)
    assert [p.name for p in negatives] == [f"train-{i:05d}-of-{len(negatives):05d}.parquet" for i in range(len(negatives))]
    assert pq.ParquetDataset(negatives).read().sort_by("trace_id").equals(
        pq.ParquetDataset(source).read().sort_by("trace_id"))
    # cut once: a second export leaves the pieces untouched
    mtimes = [p.stat().st_mtime_ns for p in negatives]
    write_export(mixed_run, tmp_path / "small-shards", max_shard_bytes=8 * 1024)
    assert [p.stat().st_mtime_ns for p in negatives] == mtimes


def test_unfinished_or_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(CardError, match="does not exist"):
        write_export(tmp_path / "nope")
    step = tmp_path / "run" / "01-import"
    step.mkdir(parents=True)
    (step / "_plan.json").write_text("{}")
    with pytest.raises(CardError, match="01-import of .* did not finish"):
        write_export(tmp_path / "run")


def test_card_command_writes_the_export_and_says_where(mixed_run, mixed_card, tmp_path):
    from typer.testing import CliRunner

    app = typer.Typer()
    register(app)
    out = tmp_path / "cli-export"
    result = CliRunner().invoke(app, ["card", str(mixed_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert f"card: {out / 'README.md'}" in printed
    assert f"data: {out / 'data' / 'negatives'}/ (1 shard(s))" in printed
    assert (out / "README.md").read_text() == mixed_card[0].card.read_text()
    missing = CliRunner().invoke(app, ["card", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_the_cli_plugin_imports_no_plotting_templating_or_hub_code():
    code = ("import sys, curate.cards.cli; "
            "print(sorted(m for m in ('matplotlib', 'jinja2', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_cache_logits_step_becomes_the_logits_config(mixed_run, tmp_path):
    import shutil

    import pyarrow as pa

    run = tmp_path / "run"
    shutil.copytree(mixed_run, run, ignore=shutil.ignore_patterns("export"))
    step = run / "08-cache_logits"
    step.mkdir()
    logits = pa.table({"trace_id": ["a", "b", "c"], "token_ids": [[1, 2], [3], [4, 5, 6]],
                       "logprobs": [[-0.1, -0.2], [-0.3], [-0.4, -0.5, -0.6]]})
    pq.write_table(logits, step / "part-00000.parquet")
    manifest = json.loads((run / "07-select" / "_manifest.json").read_text())
    manifest.update(stage="cache_logits", step=step.name, output_table="logits", rows_in=6, rows_out=3,
                    input={"kind": "step", "step": str(run / "07-select")}, config={}, summary={}, side_outputs={})
    (step / "_manifest.json").write_text(json.dumps(manifest))
    pq.write_table(pq.read_table(run / "07-select" / "_rejects.parquet").slice(0, 0), step / "_rejects.parquet")

    export = write_export(run)
    meta, body = split_card(export.card.read_text())
    assert [c["config_name"] for c in meta["configs"]] == ["curated", "negatives", "logits"]
    assert meta["configs"][2]["data_files"] == [{"split": "train", "path": "data/logits/*.parquet"}]
    assert pq.read_table(export.data["logits"][0]).equals(logits)
    summary = card_tables(body)["Summary"][0]
    assert summary[2] == {"config": "logits", "split": "train", "rows": "3", "files": "`data/logits/*.parquet`"}
    # the curated set is still select's output, not the logits table
    assert summary[0]["rows"] == fmt.num(_read(run / "07-select").height)
