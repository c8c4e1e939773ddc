"""The credit viewer (`amr-sd view`): scored batches as one self-contained HTML page."""

from amr_sd.viewer.data import Batch, ViewError, build, read_batch, read_jsonl
from amr_sd.viewer.page import render

__all__ = ["Batch", "ViewError", "build", "read_batch", "read_jsonl", "render"]
