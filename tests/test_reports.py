"""`snakemake --report`: Snakemake's own report of this workflow holds the paper's tables and figures and the
diagnostics, each with its title, caption and category from the report registry — checked in headless Chromium."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, headless_chromium, venv_env

from heatedasc.report.registry import REGISTRY

pytestmark = pytest.mark.workflow


def test_snakemake_report_files_every_table_and_figure_under_its_category(tiny_project, tmp_path):
    work = tmp_path / "work"  # a copy: other workers copy the shared project meanwhile, and snakemake writes .snakemake
    shutil.copytree(tiny_project, work, symlinks=True)
    report = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--report", str(report), "--snakefile",
                           str(REPO / "Snakefile"), "--directory", str(work), "--configfile",
                           str(REPO / "params.yaml"), str(work / "tiny.yaml")],
                          capture_output=True, text=True, env={**venv_env(), "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0 and "Report created" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    html = report.read_text()
    shown = REGISTRY.shown()
    assert {"table2", "table3", "fig3", "fig2", "calibration", "significance", "reliability"} <= set(shown)
    for title, caption, category in shown.values():  # captions as the report embeds them: JSON-escaped HTML
        escaped = json.dumps(caption)[1:-1]
        assert f'"labels": {{"name": "{title}"}}' in html and escaped in html and category in html, title

    listed = {}
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(report.resolve().as_uri(), wait_until="load")
        for category in sorted({c for _, _, c in shown.values()}):
            page.get_by_text(category, exact=True).first.click()
            page.wait_for_timeout(300)
            listed[category] = page.inner_text("body")
            page.screenshot(path=str(tmp_path / f"{category.replace(' ', '_')}.png"))
            page.goto(report.resolve().as_uri(), wait_until="load")
    print(f"screenshots: {tmp_path}")
    for title, _, category in shown.values():
        assert title in listed[category], (title, category)
