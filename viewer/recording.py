"""Recordings: frames appended to a file in the wire format, replayable up to any cut (torch-free).

    with RecordingWriter("run.nfrec") as rec:
        rec.write(frame)
    for frame in Recording("run.nfrec"):
        ...

Layout: an 8-byte file magic and a u16 version, then records. Each record is a 12-byte
header (b"NFR1", payload length u32, CRC-32 of the payload u32) followed by the payload: the
wire message's parts, each as a u32 length and its bytes. Appending never rewrites what is
there, so a file cut off mid-write (a crash, a full disk) still replays up to its last whole
record; `Recording.truncated` says whether a tail was cut. Seeking reads only the record
headers once (the index), then any frame is one read away.
"""

from __future__ import annotations

import os
import struct
import zlib

from . import wire
from .frame import Frame

FILE_MAGIC = b"NFLWREC\x00"
FILE_VERSION = 1
FILE_HEADER = struct.Struct("<8sH")
RECORD = struct.Struct("<4sII")
RECORD_MAGIC = b"NFR1"
PART = struct.Struct("<I")


class RecordingError(ValueError):
    """The file is not a neuralflow recording (or not one this version reads)."""


def _pack(frame: Frame) -> bytes:
    parts = wire.encode(frame)
    return b"".join(PART.pack(len(p)) + bytes(p) for p in parts)


def _unpack(payload: bytes) -> list[bytes]:
    parts, at = [], 0
    while at < len(payload):
        if at + PART.size > len(payload):
            raise wire.WireError("recording record: part length cut off")
        (size,) = PART.unpack_from(payload, at)
        at += PART.size
        if at + size > len(payload):
            raise wire.WireError("recording record: part longer than the record")
        parts.append(payload[at:at + size])
        at += size
    return parts


class RecordingWriter:
    """Append frames to `path` (created with its folders and a file header if new or empty; a
    cut-off or damaged last record, left by a crash, is removed first so that what is appended
    stays readable)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            existing = Recording(self.path)
            keep = len(existing)
            try:  # whole but damaged (a crash mid-write): as bad as cut off
                if keep:
                    existing[keep - 1]
            except wire.WireError:
                keep -= 1
            if existing.truncated or keep < len(existing):  # a bad tail would hide what follows
                end = existing.offsets[keep - 1][0] + existing.offsets[keep - 1][1] if keep else FILE_HEADER.size
                os.truncate(self.path, end)
        self._file = open(self.path, "ab")
        if self._file.tell() == 0:
            self._file.write(FILE_HEADER.pack(FILE_MAGIC, FILE_VERSION))
            self._file.flush()  # an empty recording is still a recording
        self.frames = 0

    def write(self, frame: Frame) -> None:
        payload = _pack(frame)
        self._file.write(RECORD.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload)
        self._file.flush()
        self.frames += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_header(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(FILE_HEADER.size)
    if len(head) < FILE_HEADER.size or head[:8] != FILE_MAGIC:
        raise RecordingError(f"{path} is not a neuralflow recording")
    (_, version) = FILE_HEADER.unpack(head)
    if version != FILE_VERSION:
        raise RecordingError(f"{path} is a version {version} recording; this neuralflow reads {FILE_VERSION}")


class Recording:
    """Random access to the whole records of a recording file.

    truncated: a partial or damaged record ends the file (everything before it is readable).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise RecordingError(f"{self.path} is a folder, not a recording")
        if not os.path.isfile(self.path):
            raise RecordingError(f"{self.path}: no such recording")
        _check_header(self.path)
        self.offsets: list[tuple[int, int, int]] = []  # (payload offset, length, crc)
        self.truncated = False
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            at = FILE_HEADER.size
            while at < size:
                f.seek(at)
                head = f.read(RECORD.size)
                if len(head) < RECORD.size:
                    self.truncated = True
                    break
                magic, length, crc = RECORD.unpack(head)
                if magic != RECORD_MAGIC or at + RECORD.size + length > size:
                    self.truncated = True
                    break
                self.offsets.append((at + RECORD.size, length, crc))
                at += RECORD.size + length

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Frame:
        offset, length, crc = self.offsets[index]
        with open(self.path, "rb") as f:
            f.seek(offset)
            payload = f.read(length)
        if zlib.crc32(payload) != crc:
            raise wire.WireError(f"record {index} of {self.path} is damaged (checksum mismatch)")
        return wire.decode(_unpack(payload))

    def __iter__(self):
        """Every readable frame in order; a damaged record ends the iteration (marks truncated)."""
        for index in range(len(self)):
            try:
                yield self[index]
            except wire.WireError:
                self.truncated = True
                return
