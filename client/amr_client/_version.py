"""The installed amr-sd version, for `amr_client.__version__`, the User-Agent and `amr-sd --version`."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("amr-sd")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"

USER_AGENT = f"amr-client/{__version__}"
