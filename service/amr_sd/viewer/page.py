"""The credit viewer's page: one self-contained HTML file (inline CSS, JS and data; no network).

Model text reaches the page only as JSON inside a `<script type="application/json">` block, with
`<`, `>` and `&` escaped, and the script puts it into the document as text nodes, never as HTML:
a response that contains `<script>` shows those characters and runs nothing.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _json_for_script(data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render(data: dict[str, Any], title: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{_asset('viewer.css')}</style>\n</head>\n"
        "<body>\n<main id=\"app\"><p id=\"loading\">Loading…</p></main>\n"
        f"<script type=\"application/json\" id=\"amr-data\">{_json_for_script(data)}</script>\n"
        f"<script>\n{_asset('viewer.js')}</script>\n</body>\n</html>\n")
