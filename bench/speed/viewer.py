"""The credit viewer's page: size and load time in a real Chromium, for a small and a large batch.

Baseline, measured side by side in the same browser: a page holding the same scored JSONL lines
(input and token texts included) as one JSON block that it only parses. Any viewer pays at least
that; the ratio is what the viewer's packing and first render cost on top. Also timed in the page:
opening the longest rollout (decoding the batch's arrays, building its group's token spans, its
own and its chart) and one sort of the table.

Inputs: `make demo`'s scored batch (build/demo-scored.jsonl: the example groups, scored for real)
when it exists, else a synthetic batch of the same shape; and a synthetic 512 x 1024 batch.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import host, report

DEMO_SCORED = Path("build/demo-scored.jsonl")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VOCAB = 49_152


def synthetic_lines(groups: int, group_size: int, tokens: int, seed: int = 0) -> list[dict]:
    """Saved-batch lines (scored group + input + pieces) shaped like real ones: a mixed group,
    CIG ~ N(-0.16, 0.73), about 5 % of tokens gated, every reflection accepted."""
    rng = random.Random(seed)
    rewards = [1.0 if i % 2 == 0 else 0.0 for i in range(group_size)]
    lines = []
    for _ in range(groups):
        scored, sent, pieces = [], [], []
        for reward in rewards:
            base = 1.0 if reward else -1.0
            ids = [rng.randrange(VOCAB) for _ in range(tokens)]
            cig = [max(-5.0, min(5.0, rng.gauss(-0.157, 0.725))) for _ in range(tokens)]
            gated = [abs(c) > 1.4 and rng.random() < 0.5 for c in cig]
            scored.append({
                "advantages": [base * (1 + 0.2 * abs(c)) if g else base for c, g in zip(cig, gated)],
                "base_advantage": base, "cig": cig, "gated": gated,
                "student_logprobs": [-abs(rng.gauss(0, 2)) for _ in range(tokens)],
                "teacher_logprobs": [-abs(rng.gauss(0, 2)) for _ in range(tokens)],
                "reflection": {"kind": "hint" if base > 0 else "critique", "accepted": True,
                               "text": "Check each addition step before stating the sum.",
                               "attempts": 1, "source": "generated"}})
            sent.append({"token_ids": ids, "reward": reward})
            pieces.append([f" w{t}" for t in ids])
        lines.append({"model": "synthetic", "policy_version": "base", "step": 0, "anneal_weight": 1.0,
                      "rollouts": scored, "pieces": pieces,
                      "input": {"prompt": {"text": "What is 2 + 2?"}, "rollouts": sent}})
    return lines


def baseline_page(jsonl: str) -> str:
    lines = "[" + ",".join(x for x in jsonl.splitlines() if x.strip()) + "]"
    safe = lines.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return ("<!doctype html><meta charset=utf-8><body>"
            f"<script type=\"application/json\" id=\"d\">{safe}</script><script>"
            "window.rows = JSON.parse(document.getElementById('d').textContent);"
            "document.body.dataset.readyMs = performance.now().toFixed(1);"
            "document.body.dataset.ready = 'true';</script>")


def load_ms(browser, path: Path, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        page = browser.new_page()
        page.goto(path.as_uri(), timeout=180_000)
        page.wait_for_selector("body[data-ready=true]", timeout=180_000, state="attached")
        times.append(float(page.get_attribute("body", "data-ready-ms")))
        page.close()
    return statistics.median(times), times


def in_page_ms(browser, path: Path, longest: int) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(path.as_uri(), timeout=180_000)
    page.wait_for_selector("body[data-ready=true]", timeout=180_000)
    timer = """([sel]) => { const t0 = performance.now(); document.querySelector(sel).click();
                            return performance.now() - t0; }"""
    out = {"open_rollout_ms": page.evaluate(timer, [f"#rollouts tbody tr[data-row='{longest}']"]),
           "sort_ms": page.evaluate(timer, ["#rollouts th[data-key='max_amp']"])}
    out["marked_tokens"] = page.locator("#tokens .tok.gated").count()
    page.close()
    return out


def measure(name: str, lines: list[dict], folder: Path, browser, repeats: int) -> dict:
    from amr_sd.viewer import build, read_batch, render

    scored = folder / f"{name}.jsonl"
    scored.write_text("".join(json.dumps(x) + "\n" for x in lines))
    t0 = time.perf_counter()
    data = build([read_batch(scored)])
    html = folder / f"{name}.html"
    html.write_text(render(data, name), encoding="utf-8")
    build_s = time.perf_counter() - t0
    base = folder / f"{name}-baseline.html"
    base.write_text(baseline_page(scored.read_text()), encoding="utf-8")
    rows = data["batches"][0]["rows"]
    longest = max(range(len(rows)), key=lambda i: rows[i]["n"])
    view_ms, view_all = load_ms(browser, html, repeats)
    base_ms, base_all = load_ms(browser, base, repeats)
    inside = in_page_ms(browser, html, longest)
    return {
        "name": name, "rollouts": len(rows), "tokens": data["batches"][0]["summary"]["tokens"],
        "scored_jsonl_bytes": scored.stat().st_size, "html_bytes": html.stat().st_size,
        "bytes_vs_jsonl": html.stat().st_size / scored.stat().st_size,
        "build_s": build_s, "load_ms": view_ms, "load_ms_all": view_all,
        "baseline_parse_ms": base_ms, "baseline_ms_all": base_all,
        "load_vs_baseline": report.ratio(view_ms, base_ms), **inside,
        "gated_in_longest": rows[longest]["gated"],  # equals marked_tokens, or the page is wrong
    }


def run(out_dir: Path, quick: bool = False) -> dict:
    from playwright.sync_api import sync_playwright

    repeats = 3 if quick else 5
    if DEMO_SCORED.exists():
        small = ("example", "example groups (make demo)",
                 [json.loads(x) for x in DEMO_SCORED.read_text().splitlines() if x.strip()])
    else:  # the example file's shape: 33 groups of 4, ~64 tokens
        small = ("example", "example-shaped, synthetic", synthetic_lines(33, 4, 64, seed=1))
    tokens = 256 if quick else 1024
    big = ("large", f"synthetic 512 x {tokens}", synthetic_lines(64, 8, tokens, seed=2))
    results = []
    with tempfile.TemporaryDirectory(prefix="amr-sd-viewer-bench-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for stem, label, lines in (small, big):
                results.append({"label": label, **measure(stem, lines, Path(tmp), browser, repeats)})
        finally:
            browser.close()
    data = {"machine": host.describe(), "chromium": CHROMIUM, "repeats": repeats, "results": results}
    report.write_json(out_dir / "viewer.json", data)
    return data


def print_table(data: dict) -> None:
    print(report.table("credit viewer in Chromium (baseline: a page that only JSON.parses the same lines)", [
        {"batch": r["label"], "tokens": r["tokens"], "HTML MB": r["html_bytes"] / 1e6,
         "x JSONL bytes": r["bytes_vs_jsonl"], "build s": r["build_s"], "load ms": r["load_ms"],
         "parse-only ms": r["baseline_parse_ms"], "x load": r["load_vs_baseline"],
         "open rollout ms": r["open_rollout_ms"], "sort ms": r["sort_ms"]} for r in data["results"]],
        ["batch", "tokens", "HTML MB", "x JSONL bytes", "build s", "load ms", "parse-only ms", "x load",
         "open rollout ms", "sort ms"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    args = parser.parse_args()
    print_table(run(args.out, quick=args.quick))
