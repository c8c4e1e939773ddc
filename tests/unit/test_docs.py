import ast
import re
from pathlib import Path

from amr_sd.cli import config_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_config_reference_is_in_sync_with_scoring_config():
    # Regenerate with: amr-sd config-doc > docs/config.md
    assert DOC.read_text() == config_markdown()


def test_server_config_reference_is_in_sync_with_settings():
    # Regenerate with: amr-sd server-config-doc > docs/server-config.md
    from amr_sd.config_flags import server_config_markdown

    assert (DOC.parent / "server-config.md").read_text() == server_config_markdown()


def test_openapi_yaml_is_in_sync_with_the_app():
    # Regenerate with: make openapi
    from amr_sd.cli import openapi_yaml

    spec = Path(__file__).resolve().parents[2] / "openapi.yaml"
    assert spec.read_text() == openapi_yaml()


def test_openapi_documents_the_score_route_with_an_example():
    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]
    assert "one group" in body["examples"]
    assert {"/v1/info", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


# ---- the README and the documentation site ------------------------------------------------------

ROOT = DOC.parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(path.read_text()) if "://" not in t and not t.startswith("#")]


def test_readme_is_short_and_offers_demo_and_test_on_its_first_screen():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 250
    first_screen = "\n".join(lines[:40])
    assert "make demo" in first_screen and "make test" in first_screen


def test_readme_make_targets_exist():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", (ROOT / "README.md").read_text()))
    assert named and named <= targets, named - targets


def test_readme_python_examples_parse():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        ast.parse(block)


def test_readme_quickstart_builds_groups_and_calls_score():
    text = (ROOT / "README.md").read_text()
    assert "groups = [" in text and "client.score(groups" in text


def test_every_relative_link_in_top_level_markdown_resolves():
    for name in ("README.md", "CHANGELOG.md"):
        for target in _relative_links(ROOT / name):
            assert (ROOT / target.split("#")[0]).exists(), f"{name}: {target}"


def test_every_docs_page_is_in_the_site_nav():
    # mkdocs --strict (make docs) fails on the same thing; this says which page, without mkdocs.
    import yaml

    def pages(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from (pages(value) if isinstance(value, list) else [value])

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert set(pages(config["nav"])) == {p.name for p in DOC.parent.glob("*.md")}


def test_docs_links_stay_inside_the_site():
    # A link out of docs/ builds on GitHub but not in the site, where strict mode refuses it.
    for page in DOC.parent.glob("*.md"):
        for target in _relative_links(page):
            path = target.split("#")[0]
            assert not path or (DOC.parent / path).exists(), f"{page.name}: {target}"


def test_env_example_names_only_real_settings():
    from amr_sd.config_flags import server_config_markdown

    known = set(re.findall(r"`(AMR_[A-Z0-9_]+)`", server_config_markdown()))
    example = (ROOT / "docker" / "amr-sd.env.example").read_text()
    named = set(re.findall(r"^#?\s*(AMR_[A-Z0-9_]+)=", example, re.M))
    assert named and named <= known, named - known
    # Every line is a comment or KEY=value, as `docker run --env-file` reads it.
    for line in example.splitlines():
        assert not line.strip() or line.startswith("#") or re.match(r"^[A-Z_][A-Z0-9_]*=", line)


def test_license_is_apache_2_as_the_package_declares():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()


def test_citation_names_the_paper_and_the_software():
    import yaml

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["type"] == "software" and cff["authors"]
    assert "2605.18529" in str(cff["preferred-citation"])
