"""The demo ends with its card, plots and report, and its publish dry-run loads with `datasets`
into the configs and splits the card declares."""

from __future__ import annotations

import contextlib
import io

import pyarrow.parquet as pq
import pytest

from curate.cards import publish as pub
from curate.cards.plots import PLOT_SIZES
from curate.demo import run_demo
from curate.runs import list_steps
from tests.test_cards_fixtures import split_card

pytestmark = pytest.mark.slow  # runs the whole demo pipeline once for the module


@pytest.fixture(scope="module")
def demo_and_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # rich's console writes to the current sys.stdout
        run_demo(out, workers=2, progress=False)
    return out, " ".join(printed.getvalue().split())


@pytest.fixture(scope="module")
def demo(demo_and_output):
    return demo_and_output[0]


def test_demo_prints_its_card_plots_and_report(demo_and_output):
    demo, printed = demo_and_output
    card, report = demo / "export" / "README.md", demo / "report.html"
    assert card.exists() and report.exists()
    assert f"card: {card}" in printed and f"report: {report}" in printed
    plots = sorted((demo / "export" / "plots").glob("*.png"))
    assert plots and {p.stem for p in plots} <= set(PLOT_SIZES)
    for plot in plots:
        assert f"plot: {plot}" in printed
        assert f"](plots/{plot.name})" in card.read_text()


def test_demo_dry_run_loads_into_the_declared_configs_and_splits(demo, tmp_path):
    import datasets

    target = tmp_path / "upload"
    pub.dry_run(demo, target)
    meta, _ = split_card((target / "README.md").read_text())
    select = [s for s in list_steps(demo) if s.manifest and s.manifest.stage == "select"][-1]
    expected = {"curated": sum(pq.ParquetFile(p).metadata.num_rows for p in select.path.glob("part-*.parquet"))}
    for side in (p for p in select.path.iterdir() if p.is_dir()):
        expected[side.name] = sum(pq.ParquetFile(p).metadata.num_rows for p in side.glob("part-*.parquet"))
    assert [c["config_name"] for c in meta["configs"]] == list(expected)
    assert meta["license"] == "apache-2.0"
    for config in meta["configs"]:
        loaded = datasets.load_dataset(str(target), config["config_name"], cache_dir=str(tmp_path / "cache"))
        assert sorted(loaded) == sorted(f["split"] for f in config["data_files"])
        assert loaded["train"].num_rows == expected[config["config_name"]]
