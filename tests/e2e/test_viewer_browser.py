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
    """A batch's rollouts, in the page's row order, from the file itself."""
    rows = []
    for g, line in enumerate(step_path(run_dir, step).read_text().splitlines()):
        group = json.loads(line)
        for r, (scored, sent) in enumerate(zip(group["rollouts"], group["input"]["rollouts"])):
            n = len(sent["token_ids"])
            # No cig/gated for a rollout the teacher saw no reflection for: nothing gated there.
            rows.append({"g": g, "r": r, "reflection": scored.get("reflection"), "n": n,
                         "reward": sent["reward"], "A": scored["base_advantage"],
                         "cig": scored.get("cig") or [0.0] * n, "gated_mask": scored.get("gated") or [False] * n,
                         "gated": sum(scored.get("gated") or []), "text": "".join(group["pieces"][r])})
    return rows


def anneal_weight(run_dir: Path, step: int) -> float:
    return json.loads(step_path(run_dir, step).read_text().splitlines()[0])["anneal_weight"]


def open_page(page, page_file: Path, hash: str = ""):
    page.goto(page_file.as_uri() + hash)
    page.wait_for_selector("body[data-ready=true]")
    return page


def open_rollout(page, i: int):
    page.click(f"#rollouts tbody tr[data-row='{i}']")
    page.wait_for_selector(f"#detail[data-row='{i}']")


def shot(page, name: str):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def background(page, selector: str) -> str:
    return page.eval_on_selector(selector, "e => getComputedStyle(e).backgroundColor")


def test_every_gated_token_is_marked_and_counted(page, page_file, run_dir):
    rows = saved_rows(run_dir, STEPS[-1])
    gated_in_data = sum(r["gated"] for r in rows)
    assert gated_in_data > 0, "no token of six example groups was gated: nothing to check marks against"
    open_page(page, page_file)
    assert page.inner_text("#gated-total") == str(gated_in_data)
    marked = 0
    for i, row in enumerate(rows):
        open_rollout(page, i)
        assert page.locator("#tokens .tok").count() == row["n"]
        in_page = page.locator("#tokens .tok.gated").count()
        assert in_page == row["gated"], f"rollout {i}"
        marked += in_page
    assert marked == gated_in_data
    assert all(u.startswith("file://") for u in page.requests), page.requests


def test_colour_by_cig_shows_a_sub_threshold_token(page, page_file, run_dir):
    """A token the gate left alone (0.3 < |CIG| < τ = 1) has no colour by Â/A and has one by CIG."""
    rows = saved_rows(run_dir, STEPS[-1])
    found = [(i, t) for i, r in enumerate(rows) if r["reflection"] and r["reflection"]["accepted"]
             for t, (c, m) in enumerate(zip(r["cig"], r["gated_mask"])) if 0.3 < abs(c) < 1.0 and not m]
    assert found, "no reflected token with 0.3 < |CIG| < 1 in six example groups"
    i, t = found[0]
    open_page(page, page_file)
    open_rollout(page, i)
    token = f"#tokens .tok[data-t='{t}']"
    assert background(page, token) == "rgba(0, 0, 0, 0)"
    assert page.get_attribute("#colour-legend", "data-mode") == "adv"
    page.check("#colour-cig")
    assert page.get_attribute("#colour-legend", "data-mode") == "cig"
    assert background(page, token) != "rgba(0, 0, 0, 0)"
    legend = page.inner_text("#colour-legend")
    assert "full colour at |CIG| ≥ κ" in legend and "−κ = −5.0" in legend
    # Blue above 0, orange below, on the same scale in the group view.
    red, _, blue = (float(x) for x in re.findall(r"[\d.]+", background(page, token))[:3])
    assert (blue > red) == (rows[i]["cig"][t] > 0)
    member = f"#group .member[data-row='{i}'] .tok[data-t='{t}']"
    assert background(page, member) == background(page, token)
    page.hover(token)
    assert page.inner_text("#readout").startswith(f"#{t} ")
    shot(page, "viewer-cig.png")


def test_histogram_marks_tau_and_the_batch_settings(page, page_file, run_dir):
    open_page(page, page_file)
    # The server's defaults: τ+ = τ- = 1 (the stats in the file), κ = 5,
    # λ_eff = 0.2 w and γ_eff = 0.1 w with this step's w.
    w = anneal_weight(run_dir, STEPS[-1])
    assert float(page.get_attribute("#cig-hist line.tau[data-branch='positive']", "data-value")) == pytest.approx(1.0)
    assert float(page.get_attribute("#cig-hist line.tau[data-branch='negative']", "data-value")) == pytest.approx(1.0)
    assert page.locator("#cig-hist text.tau-label").all_text_contents() == ["τ+ 1.00", "−τ− 1.00"]

    def setting(key):
        return page.inner_text(f"#settings tr[data-key='{key}'] td.value")

    assert (setting("tau_pos"), setting("tau_neg"), setting("kappa")) == ("1.000", "1.000", "5.000")
    assert setting("lambda_eff") == f"{0.2 * w:.3f}" and setting("gamma_eff") == f"{0.1 * w:.3f}"
    assert setting("anneal_weight") == f"{w:.3f}"
    assert page.get_attribute("#settings tr[data-key='kappa']", "data-source") == "default"
    # The saved lines carry their request's stats: τ is the margin the gate used, from the file.
    assert page.get_attribute("#settings tr[data-key='tau_pos']", "data-source") == "file"
    assert page.get_attribute("#settings tr[data-key='tau_neg']", "data-source") == "file"
    assert "99.5th percentile of |CIG|" in page.inner_text("#hist-note")


def test_group_view_numbers_equal_the_file(page, page_file, run_dir):
    rows = saved_rows(run_dir, STEPS[-1])
    open_page(page, page_file)
    for g in sorted({r["g"] for r in rows}):
        members = [(i, r) for i, r in enumerate(rows) if r["g"] == g]
        open_rollout(page, members[-1][0])
        assert page.get_attribute("#group", "data-group") == str(g)
        assert page.locator("#group .member").count() == len(members)
        for i, r in members:
            card = f"#group .member[data-row='{i}']"

            def field(name, card=card):
                return page.inner_text(f"{card} [data-field='{name}']")

            assert field("reward") == f"{r['reward']:.3f}"
            assert field("A") == ("+" if r["A"] >= 0 else "") + f"{r['A']:.3f}"
            assert (field("gated"), field("n")) == (str(r["gated"]), str(r["n"]))
            ref = r["reflection"]
            if ref:
                assert field("verdict") == (f"{ref['kind']} accepted" if ref["accepted"]
                                            else f"{ref['kind']} rejected: {ref['reject_reason']}")
            assert page.locator(f"{card} .tok").count() == r["n"]
            assert page.locator(f"{card} .tok.gated").count() == r["gated"]
        assert "selected" in page.get_attribute(f"#group .member[data-row='{members[-1][0]}']", "class")
        reflected = sum(r["n"] for _, r in members if r["reflection"] and r["reflection"]["accepted"] and r["A"])
        gated = sum(r["gated"] for _, r in members)
        assert f"({gated} of {reflected} reflected tokens" in page.inner_text("#group-figures")
    shot(page, "viewer-group.png")


def test_filters_narrow_the_table_and_count_its_rows(page, page_file, run_dir):
    rows = saved_rows(run_dir, STEPS[-1])
    open_page(page, page_file)

    def shown():
        return sorted(int(x) for x in page.eval_on_selector_all("#rollouts tbody tr[data-row]", "rs => rs.map(r => r.dataset.row)"))

    rejected = [i for i, r in enumerate(rows) if r["reflection"] and not r["reflection"]["accepted"]]
    page.select_option("#f-verdict", "rejected")
    assert shown() == rejected
    assert page.inner_text("#row-count") == f"{len(rejected)} of {len(rows)} rollouts"
    page.select_option("#f-branch", "critique")
    assert shown() == [i for i in rejected if rows[i]["A"] < 0]
    page.click("#f-clear")
    assert len(shown()) == len(rows)
    reason = rows[rejected[0]]["reflection"]["reject_reason"]
    page.select_option("#f-reason", reason)
    assert shown() == [i for i, r in enumerate(rows) if r["reflection"] and (
        r["reflection"].get("reject_reason") == reason or reason in r["reflection"]["reject_reasons"])]
    page.click("#f-clear")
    page.fill("#f-rmin", "1")
    assert shown() == [i for i, r in enumerate(rows) if r["reward"] >= 1]
    page.click("#f-clear")
    word = max((w for r in rows for w in r["text"].split() if len(w) >= 4),
               key=lambda w: (sum(w.lower() in r["text"].lower() for r in rows) < len(rows), len(w)))
    page.fill("#f-q", word)
    expected = [i for i, r in enumerate(rows) if word.lower() in r["text"].lower()]
    assert shown() == expected and 0 < len(expected)
    open_rollout(page, expected[0])
    assert page.locator("#tokens .tok.match").count() > 0
    shot(page, "viewer-filter.png")


def test_a_deep_link_restores_the_view_after_reload(page, page_file, run_dir, browser):
    rows = saved_rows(run_dir, STEPS[-1])
    i = next(i for i, r in enumerate(rows) if r["g"] > 0 and r["n"] > 3 and r["reflection"]
             and r["reflection"]["accepted"])
    open_page(page, page_file)
    open_rollout(page, i)
    page.click("#tokens .tok[data-t='2']")
    page.check("#colour-cig")
    g, r = rows[i]["g"], rows[i]["r"]
    expected = f"#step={STEPS[-1]}&group={g}&rollout={r}&token=2&colour=cig"
    assert page.evaluate("location.hash") == expected
    page.reload()
    page.wait_for_selector("body[data-ready=true]")

    def restored(p):
        assert p.get_attribute("#detail", "data-row") == str(i)
        assert p.get_attribute("#tokens .tok.cursor", "data-t") == "2"
        assert p.inner_text("#readout").startswith("#2 ")
        assert p.get_attribute(f"#rollouts tbody tr[data-row='{i}']", "class") == "selected"
        assert p.is_checked("#colour-cig")

    restored(page)
    # The same address in another browser context: a finding shared.
    other = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    open_page(other, page_file, expected + "&verdict=accepted&sort=-gated")
    restored(other)
    assert other.input_value("#f-verdict") == "accepted"
    assert other.get_attribute("#rollouts th[data-key='gated']", "aria-sort") == "descending"
    # An earlier step by its step number.
    open_page(other, page_file, f"#step={STEPS[0]}&group=0&rollout=1")
    assert f"step {STEPS[0]}" in other.inner_text("main p.meta")
    assert other.get_attribute("#detail", "data-row") == "1"
    other.context.close()


def test_keyboard_navigation(page, page_file, run_dir):
    rows = saved_rows(run_dir, STEPS[-1])
    open_page(page, page_file)
    page.keyboard.press("j")
    page.wait_for_selector("#detail[data-row='0']")
    page.keyboard.press("j")
    page.wait_for_selector("#detail[data-row='1']")
    page.keyboard.press("k")
    page.wait_for_selector("#detail[data-row='0']")
    page.keyboard.press("ArrowDown")
    page.wait_for_selector("#detail[data-row='1']")
    page.keyboard.press("]")  # the next rollout of the same group
    page.wait_for_selector("#detail[data-row='2']")
    page.keyboard.press("[")
    page.wait_for_selector("#detail[data-row='1']")
    page.keyboard.press("l")
    assert page.get_attribute("#tokens .tok.cursor", "data-t") == "0"
    page.keyboard.press("l")
    assert page.get_attribute("#tokens .tok.cursor", "data-t") == "1"
    page.keyboard.press("h")
    assert page.get_attribute("#tokens .tok.cursor", "data-t") == "0"
    if rows[1]["n"] > 10:
        page.keyboard.press("Shift+ArrowRight")
        assert page.get_attribute("#tokens .tok.cursor", "data-t") == "10"
    # n: the next gated token of a rollout that has some.
    i = next(i for i, r in enumerate(rows) if r["gated"])
    open_rollout(page, i)
    page.keyboard.press("n")
    first = rows[i]["gated_mask"].index(True)
    assert page.get_attribute("#tokens .tok.cursor", "data-t") == str(first)
    assert page.inner_text("#readout").endswith("gated")
    page.check("#colour-adv")  # a focused radio button still leaves the keys to the page
    page.keyboard.press("c")
    assert page.get_attribute("#colour-legend", "data-mode") == "cig"
    # Typing in the search is typing, not navigation; Escape hands the keys back.
    page.keyboard.press("/")
    page.keyboard.type("jk")
    assert page.input_value("#f-q") == "jk"
    assert page.get_attribute("#detail", "data-row") == str(i)
    page.fill("#f-q", "")
    page.keyboard.press("Escape")
    page.keyboard.press("j")
    assert page.get_attribute("#detail", "data-row") != str(i)


def test_numeric_columns_sort_descending_first(page, page_file, run_dir):
    rows = saved_rows(run_dir, STEPS[-1])
    open_page(page, page_file)

    def column(key):
        return [float(t) for t in page.locator(f"#rollouts tbody td[data-col='{key}']").all_inner_texts()]

    page.click("#rollouts th[data-key='reward']")
    assert page.get_attribute("#rollouts th[data-key='reward']", "aria-sort") == "descending"
    assert column("reward") == sorted((round(r["reward"], 3) for r in rows), reverse=True)
    page.click("#rollouts th[data-key='reward']")
    assert page.get_attribute("#rollouts th[data-key='reward']", "aria-sort") == "ascending"
    assert column("reward") == sorted(round(r["reward"], 3) for r in rows)
    page.click("#rollouts th[data-key='gated']")
    assert column("gated") == sorted((float(r["gated"]) for r in rows), reverse=True)
    page.click("#rollouts th[data-key='kind']")  # a text column: ascending first
    assert page.get_attribute("#rollouts th[data-key='kind']", "aria-sort") == "ascending"


def test_a_rejected_reflection_lists_every_attempt_with_its_reason(page, page_file, run_dir):
    rows = saved_rows(run_dir, STEPS[-1])
    open_page(page, page_file)
    rejected = [i for i, r in enumerate(rows) if r["reflection"] and not r["reflection"]["accepted"]]
    accepted = [i for i, r in enumerate(rows) if r["reflection"] and r["reflection"]["accepted"]]
    assert rejected and accepted, "six example groups gave no rejected or no accepted reflection"
    i = max(rejected, key=lambda i: rows[i]["reflection"]["attempts"])
    ref = rows[i]["reflection"]
    open_rollout(page, i)
    assert f"rejected ({ref['reject_reason']})" in page.inner_text("#reflection p")
    attempts = page.locator("#attempts li")
    assert attempts.count() == ref["attempts"] == len(ref["reject_reasons"])
    assert [attempts.nth(k).get_attribute("data-reason") for k in range(attempts.count())] == ref["reject_reasons"]
    assert [t.split(":", 1)[0] for t in page.locator("#attempts .attempt-head").all_inner_texts()] == \
        [f"attempt {k + 1}" for k in range(ref["attempts"])]
    assert page.text_content("#attempts li:last-child #reflection-text") == (ref["text"] or "(no text)")
    # Every rejected attempt's text beside its reason (rejected_texts), the last one `text`.
    texts = [t.inner_text() for t in page.locator("#attempts li .reflection").all()]
    assert texts[:-1] == [t or "" for t in ref["rejected_texts"][:-1]]
    assert "not in the file" not in page.inner_text("#attempts")
    shot(page, "viewer-rejected.png")
    j = accepted[0]
    ref = rows[j]["reflection"]
    open_rollout(page, j)
    assert "accepted" in page.inner_text("#reflection p")
    assert page.text_content("#reflection-text") == (ref["text"] or "(no text)")
    assert page.inner_text("#attempts li:last-child .attempt-head") == f"attempt {page.locator('#attempts li').count()}: accepted"
    assert [page.get_attribute(f"#attempts li >> nth={k}", "data-reason") for k in range(len(ref["reject_reasons"]))] == ref["reject_reasons"]


def test_curves_carry_cig_gated_markers_and_the_pointer(page, page_file, run_dir):
    rows = saved_rows(run_dir, STEPS[-1])
    i = max((i for i, r in enumerate(rows) if r["gated"]), key=lambda i: rows[i]["gated"])
    open_page(page, page_file)
    open_rollout(page, i)
    chart = "#logprob-chart"
    for series in ("student", "teacher", "cig"):
        assert page.locator(f"{chart} path[data-series='{series}']").count() == 1
    assert page.locator(f"{chart} circle.gated-marker").count() == rows[i]["gated"]
    # No label runs into a plot: each axis label ends above its panel's frame.
    assert page.evaluate("""(sel) => {
        const svg = document.querySelector(sel);
        const frames = [...svg.querySelectorAll('rect:not(.overlay)')].map(r => r.getBBox());
        return [...svg.querySelectorAll('text.axis-label')].every((t, k) => {
            const b = t.getBBox(); return b.y + b.height <= frames[k].y + 0.5; });
    }""", chart)
    t = min(3, rows[i]["n"] - 1)
    page.hover(f"#tokens .tok[data-t='{t}']")
    assert page.get_attribute("#chart-cursor", "visibility") == "visible"
    assert page.text_content("#chart-label").startswith(f"#{t} ")
    # Pointing at the chart points at the token: the readout follows.
    box = page.locator(f"{chart} rect.overlay").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 1, box["y"] + 5)
    assert page.inner_text("#readout").startswith(f"#{rows[i]['n'] - 1} ")
    page.mouse.click(box["x"] + 1, box["y"] + 5)
    assert page.get_attribute("#tokens .tok.cursor", "data-t") == "0"
    page.hover(f"#tokens .tok[data-t='{t}']")
    shot(page, "viewer.png")
    assert (ARTIFACTS / "viewer.png").stat().st_size > 20_000


def test_two_steps_make_a_trend_a_batch_picker_and_a_prompt_history(page, page_file, run_dir):
    open_page(page, page_file)
    assert page.locator("#trend-chart path").count() == 4
    assert page.locator("#batch option").all_inner_texts() == [f"step-{s:06d}.jsonl (step {s})" for s in STEPS]
    # The same six groups were scored at both steps: each prompt's group at every step.
    open_rollout(page, 5)
    g = saved_rows(run_dir, STEPS[-1])[5]["g"]
    steps = page.locator("#prompt-steps tbody tr")
    assert steps.count() == len(STEPS)
    assert [steps.nth(k).locator("td").first.inner_text() for k in range(len(STEPS))] == [str(s) for s in STEPS]
    first = [r for r in saved_rows(run_dir, STEPS[0]) if r["g"] == g]
    accepted = sum(bool(r["reflection"] and r["reflection"]["accepted"]) for r in first)
    requested = sum(bool(r["reflection"]) for r in first)
    assert steps.nth(0).locator("td").nth(3).inner_text() == f"{accepted} of {requested}"
    steps.nth(0).click()
    assert f"step {STEPS[0]}" in page.inner_text("main p.meta")
    assert page.get_attribute("#group", "data-group") == str(g)
    page.select_option("#batch", "1")
    assert f"step {STEPS[1]}" in page.inner_text("main p.meta")


def test_amr_sd_score_output_with_the_input_file(page, run_dir, example_groups, tmp_path):
    """Lines without input: `--in` supplies it, `--model` (the file's) the text; the groups file
    itself is refused as unscored."""
    scored = tmp_path / "scored.jsonl"
    with scored.open("w") as f:
        for line in step_path(run_dir, STEPS[0]).read_text().splitlines():
            group = json.loads(line)
            f.write(json.dumps({k: v for k, v in group.items() if k not in ("input", "pieces")}) + "\n")
    src = tmp_path / "groups.jsonl"
    src.write_text("".join(json.dumps(g) + "\n" for g in example_groups[:6]))
    assert "--in" in amr_sd("view", scored).stderr
    unscored = amr_sd("view", src)
    assert unscored.returncode == 2 and f"{src}:1: this file is not scored" in unscored.stderr
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
