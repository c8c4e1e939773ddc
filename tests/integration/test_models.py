"""The embedded default model: converted once from the GGUF shipped on PyPI, then reused."""

import pytest
from safetensors.torch import load_file

from amr_sd.engine.models import EMBEDDED_MODEL, materialize_embedded, resolve_model

pytestmark = pytest.mark.integration


def test_embedded_model_converts_into_an_empty_cache_and_is_reused(tmp_path):
    folder = materialize_embedded(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    # Atomic: nothing half-written is left beside the finished folder.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [folder.name]
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert materialize_embedded(tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime  # not converted again

    # Deterministic: the same weights as the shared cache the other tests use.
    fresh, shared = load_file(folder / "model.safetensors"), load_file(resolve_model(EMBEDDED_MODEL) + "/model.safetensors")
    assert fresh.keys() == shared.keys()
    assert all(fresh[k].dtype == shared[k].dtype and fresh[k].equal(shared[k]) for k in fresh)


def test_local_folders_and_hub_ids_pass_through(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
