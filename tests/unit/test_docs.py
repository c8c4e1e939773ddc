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
