"""The version a user can read: `amr_client.__version__`, `amr-sd --version`, the User-Agent."""

from __future__ import annotations

from importlib import metadata

import pytest

import amr_client
from amr_sd.cli import build_parser


def test_the_sdk_version_is_the_installed_distributions():
    assert amr_client.__version__ == metadata.version("amr-sd")


def test_amr_sd_version_prints_it(capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"amr-sd {amr_client.__version__}"
