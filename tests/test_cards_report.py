"""`curate report`: one self-contained HTML page, rendered in a real headless Chromium; the
screenshot is kept as a test artifact under artifacts/."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from curate.cards.cli import register
from curate.cards.plots import PLOT_SIZES
from tests.conftest import REPO
from tests.test_cards_fixtures import build_run

ARTIFACTS = REPO / "artifacts"
WINDOW = (1280, 2400)


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and we are root, else skipped."""
    found = _find_chromium()
    if found:
        return found
    if not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs root (apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=True, capture_output=True,
                       timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"could not install chromium with apt-get: {detail.decode(errors='replace')[-300:]}")
    found = _find_chromium()
    if not found:
        pytest.skip("apt-get install chromium succeeded but no chromium binary is on PATH")
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Written by the `report` command (default path RUN/report.html)."""
    run = build_run(tmp_path_factory.mktemp("report"), licenses={"synth-a": "apache-2.0", "synth-nc": "cc-by-nc-4.0"})
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert f"report: {run / 'report.html'}" in result.output
    return run / "report.html"


def test_report_is_self_contained_with_every_section_and_inline_plots(report):
    html = report.read_text()
    assert report.name == "report.html" and report.parent.name == "run"
    # nothing fetched from anywhere: no external scripts, styles or images
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//|file:)""", html)
    assert "<script" not in html
    for title in ("Summary", "Sources and licences", "Teachers", "Funnel", "Verification", "Format checks",
                  "Deduplication", "Contamination", "Difficulty", "Token lengths", "Reproduce"):
        assert f"<h2>{title}</h2>" in html
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)" width="(\d+)" height="(\d+)"',
                        html)
    assert len(images) == 4
    for payload, _alt, width, height in images:
        with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
            assert image.format == "PNG"
            assert image.size == (int(width), int(height))
            assert image.size in PLOT_SIZES.values()
    # the same numbers as the card: the non-commercial licence and the pipeline are stated
    assert "<strong>Non-commercial:</strong>" in html and "<code>cc-by-nc-4.0</code>" in html
    assert "name: cards-small" in html


def test_report_renders_in_headless_chromium(report, chromium, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "cards_report.png"
    shot.unlink(missing_ok=True)
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           f"--window-size={WINDOW[0]},{WINDOW[1]}", report.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
    with Image.open(shot) as image:
        assert image.format == "PNG"
        assert image.size == WINDOW
        rgb = image.convert("RGB")
        assert len(rgb.getcolors(maxcolors=1 << 22)) > 100  # text, tables and plots, not a blank page
        # the header band is drawn with the page's own background colour (the CSS loaded)
        assert rgb.getpixel((5, 5)) == (0xF5, 0xF7, 0xFA)
