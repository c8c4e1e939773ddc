"""The credit viewer in a real headless Chromium (Debian's, driven by Playwright), on batches that a
real server scored and `amr-sd view` turned into a page.

Screenshots are kept under build/test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from amr_client import AMRClient
from amr_client.saved import VIEW_RETURNS, save_scored, step_path

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = os.environ.get("AMR_TEST_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying hosts this closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEPS = (0, 20)


@pytest.fixture(scope="module")
def run_dir(amr_server, example_groups, tmp_path_factory):
    """Two saved steps of six example groups, as a trainer adapter writes them."""
    from transformers import AutoTokenizer

    from amr_sd.engine.models import EMBEDDED_MODEL, resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED_MODEL))
    folder = tmp_path_factory.mktemp("run")
    groups = example_groups[:6]
    with AMRClient(amr_server) as client:
        for step in STEPS:
            result = client.score(groups, step=step, returns=VIEW_RETURNS)
            save_scored(step_path(folder, step), groups, result, decode=tok.decode)
    return folder


def amr_sd(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amr_sd.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def page_file(run_dir) -> Path:
    out = run_dir / "view.html"
    proc = amr_sd("view", *sorted(run_dir.glob("step-*.jsonl")), "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stderr
    return out


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found; `make setup` installs Debian's chromium "
                    "(apt-get install -y chromium)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.requests = []  # every URL the page asked for: it must need nothing but itself
    page.on("request", lambda r: page.requests.append(r.url))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors


def saved_rows(run_dir: Path, step: int) -> list[dict]:
    """The last batch's rollouts, in the page's row order, from the file itself."""
    rows = []
    for line in step_path(run_dir, step).read_text().splitlines():
        group = json.loads(line)
        for r, r_in in zip(group["rollouts"], group["input"]["rollouts"]):
            # No cig/gated for a rollout the teacher saw no reflection for: nothing gated there.
            rows.append({"reflection": r.get("reflection"), "n": len(r_in["token_ids"]),
                         "reward": r_in["reward"], "gated": sum(r.get("gated") or [])})
    return rows


def open_page(page, page_file: Path):
    page.goto(page_file.as_uri())
    page.wait_for_selector("body[data-ready=true]")
    return page


def test_every_gated_token_is_marked_and_counted(page, page_file, run_dir):
    rows = saved_rows(run_dir, STEPS[-1])
    gated_in_data = sum(r["gated"] for r in rows)
    assert gated_in_data > 0, "no token of six example groups was gated: nothing to check marks against"
    open_page(page, page_file)
    assert page.inner_text("#gated-total") == str(gated_in_data)
    marked = 0
    for i, row in enumerate(rows):
        page.click(f"#rollouts tbody tr[data-row='{i}']")
        page.wait_for_selector(f"#detail[data-row='{i}']")
        assert page.locator("#tokens .tok").count() == row["n"]
        in_page = page.locator("#tokens .tok.gated").count()
        assert in_page == row["gated"], f"rollout {i}"
        marked += in_page
    assert marked == gated_in_data
    assert all(u.startswith("file://") for u in page.requests), page.requests


def test_clicking_a_rollout_shows_its_reflection_and_reasons(page, page_file, run_dir):
    rows = saved_rows(run_dir, STEPS[-1])
    open_page(page, page_file)
    rejected = [i for i, r in enumerate(rows) if r.get("reflection") and not r["reflection"]["accepted"]]
    accepted = [i for i, r in enumerate(rows) if r.get("reflection") and r["reflection"]["accepted"]]
    assert rejected and accepted, "six example groups gave no rejected or no accepted reflection"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for i in (rejected[0], accepted[0]):
        ref = rows[i]["reflection"]
        page.click(f"#rollouts tbody tr[data-row='{i}']")
        page.wait_for_selector(f"#detail[data-row='{i}']")
        assert page.text_content("#reflection-text") == (ref["text"] or "(no text)")
        verdict = page.inner_text("#reflection p")
        if ref["accepted"]:
            assert "accepted" in verdict and page.locator("#reasons").count() == (1 if ref["reject_reasons"] else 0)
        else:
            assert f"rejected ({ref['reject_reason']})" in verdict
            assert page.locator("#reasons li").all_inner_texts() == ref["reject_reasons"]
        if i == rejected[0]:
            page.screenshot(path=str(ARTIFACTS / "viewer-rejected.png"), full_page=True)
    page.click(f"#rollouts tbody tr[data-row='{accepted[0]}']")
    page.hover("#tokens .tok >> nth=0")
    assert page.inner_text("#readout").startswith("#0 ")
    page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)
    assert (ARTIFACTS / "viewer.png").stat().st_size > 20_000


def test_sorting_by_a_column(page, page_file, run_dir):
    rows = saved_rows(run_dir, STEPS[-1])
    open_page(page, page_file)

    def column(key):
        return [float(t) for t in page.locator(f"#rollouts tbody td[data-col='{key}']").all_inner_texts()]

    page.click("#rollouts th[data-key='reward']")
    assert page.get_attribute("#rollouts th[data-key='reward']", "aria-sort") == "ascending"
    assert column("reward") == sorted(round(r["reward"], 3) for r in rows)
    page.click("#rollouts th[data-key='reward']")
    assert page.get_attribute("#rollouts th[data-key='reward']", "aria-sort") == "descending"
    assert column("reward") == sorted((round(r["reward"], 3) for r in rows), reverse=True)
    page.click("#rollouts th[data-key='gated']")
    assert column("gated") == sorted(float(r["gated"]) for r in rows)


def test_two_steps_make_a_trend_and_a_batch_picker(page, page_file):
    open_page(page, page_file)
    assert page.locator("#trend-chart path").count() == 4
    assert page.locator("#batch option").all_inner_texts() == [f"step-{s:06d}.jsonl (step {s})" for s in STEPS]
    page.select_option("#batch", "0")
    assert f"step {STEPS[0]}" in page.inner_text("main p.meta")


def test_amr_sd_score_output_with_the_input_file(page, run_dir, example_groups, tmp_path):
    """`amr-sd score`'s lines hold no input: `--in` supplies it, `--model` (the file's) the text."""
    scored = tmp_path / "scored.jsonl"
    with scored.open("w") as f:
        for line in step_path(run_dir, STEPS[0]).read_text().splitlines():
            group = json.loads(line)
            f.write(json.dumps({k: v for k, v in group.items() if k not in ("input", "pieces")}) + "\n")
    src = tmp_path / "groups.jsonl"
    src.write_text("".join(json.dumps(g) + "\n" for g in example_groups[:6]))
    assert "--in" in amr_sd("view", scored).stderr
    proc = amr_sd("view", scored, "--in", src)
    assert proc.returncode == 0, proc.stderr
    open_page(page, scored.with_suffix(".html"))
    gated = sum(r["gated"] for r in saved_rows(run_dir, STEPS[0]))
    assert page.inner_text("#gated-total") == str(gated)


def test_serve_answers_the_page_over_http_and_stops_on_sigterm(page, page_file):
    proc = subprocess.Popen([sys.executable, "-m", "amr_sd.cli", "view", str(page_file.with_name("step-000000.jsonl")),
                             "--out", str(page_file.with_name("served.html")), "--serve", "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            found = re.search(r"serving (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        assert url, "amr-sd view --serve printed no address"
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        assert "step 0" in page.inner_text("main p.meta")
        assert page.goto(url + "etc/passwd").status == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
