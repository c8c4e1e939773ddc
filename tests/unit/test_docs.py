from pathlib import Path

from amr_sd.cli import config_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_config_reference_is_in_sync_with_scoring_config():
    # Regenerate with: amr-sd config-doc > docs/config.md
    assert DOC.read_text() == config_markdown()
