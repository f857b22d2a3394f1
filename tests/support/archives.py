"""Backup archives as tests take them apart and forge them.

``ian backup`` writes a tar stream compressed with Zstandard (``.tar.zst``); archives of the
previous format are plain tar files (``.tar``), which every reader still accepts. These helpers
read either into :mod:`tarfile` members, write a forged member list back in either container,
and turn a current archive into one of the previous format (:func:`write_legacy`).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import zstandard

__all__ = [
    "Member",
    "compress",
    "is_compressed",
    "open_tar",
    "read_members",
    "tar_bytes",
    "write_legacy",
    "write_members",
]

Member = tuple[tarfile.TarInfo, bytes]
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def is_compressed(archive: Path) -> bool:
    return archive.read_bytes()[:4] == ZSTD_MAGIC


def tar_bytes(archive: Path) -> bytes:
    """The tar stream of ``archive``: decompressed (every frame) when it is a ``.tar.zst``."""
    raw = archive.read_bytes()
    if raw[:4] != ZSTD_MAGIC:
        return raw
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True)
    return reader.read()


def open_tar(archive: Path) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(tar_bytes(archive)))


def read_members(archive: Path) -> list[Member]:
    out = []
    with open_tar(archive) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isreg() else b""  # type: ignore[union-attr]
            out.append((m, data))
    return out


def compress(data: bytes) -> bytes:
    """``data`` as one Zstandard frame (what `zstd` or `tar --zstd` would write)."""
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def write_members(path: Path, members: list[Member], *, compressed: bool = True) -> None:
    """A tar of ``members`` (in order, sizes fixed up), zstd-compressed unless ``compressed``
    is False (the previous, plain format)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw = buf.getvalue()
    path.write_bytes(compress(raw) if compressed else raw)


def write_legacy(archive: Path, out: Path) -> None:
    """Rewrite ``archive`` as ``ian backup`` wrote archives before compression: a plain POSIX
    tar (pax format, as :mod:`tarfile` wrote it) of the same members, ``manifest.json`` (the
    same document, ``format_version`` 1) first."""
    members = read_members(archive)
    assert members[0][0].name == "manifest.json"
    assert json.loads(members[0][1])["format_version"] == 1
    write_members(out, members, compressed=False)
