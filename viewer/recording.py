"""Recordings: frames appended to a file in the wire format, replayable up to any cut (torch-free).

    with RecordingWriter("run.nfrec") as rec:
        rec.write(frame)
    for frame in Recording("run.nfrec"):
        ...

Layout: an 8-byte file magic and a u16 version, then records. Each record is a 12-byte
header (b"NFR1", payload length u32, CRC-32 of the payload u32) followed by the payload: the
wire message's parts, each as a u32 length and its bytes. Appending never rewrites what is
there, so a file cut off mid-write (a crash, a full disk) still replays up to its last whole
record; `Recording.truncated` says whether a tail was cut. Damage inside the file costs only
the records it hit: the index skips to the next record whose checksum holds, and reading skips
a record whose checksum fails (`Recording.damaged` counts both), so the frames after it (and
files joined with `cat`) still replay. Seeking reads only the record headers once (the index,
plus a scan where a header is damaged), then any frame is one read away.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib

from . import wire
from .frame import Frame

FILE_MAGIC = b"NFLWREC\x00"
FILE_VERSION = 1
FILE_HEADER = struct.Struct("<8sH")
FILE_HEAD = FILE_HEADER.pack(FILE_MAGIC, FILE_VERSION)  # what every file this version writes starts with
RECORD = struct.Struct("<4sII")
RECORD_MAGIC = b"NFR1"
PART = struct.Struct("<I")


class RecordingError(ValueError):
    """The file is not a neuralflow recording (or not one this version reads), or holds nothing
    that can be written as asked."""


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
    """Append frames to `path` (created with its folders and a file header if new or empty).

    A cut-off last record, left by a crash, is removed first so that what is appended stays
    readable (`cut_bytes` says how many bytes went); nothing else already there is touched.
    A pipe (record --out /dev/stdout | ...) gets a whole recording, file header first.
    `before`: how many records the file held already.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.cut_bytes = self.before = 0
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            existing = Recording(self.path)
            self.before = len(existing)
            if existing.truncated:
                self.cut_bytes = os.path.getsize(self.path) - existing.end
                os.truncate(self.path, existing.end)
        self._file = open(self.path, "ab")
        if not self._file.seekable() or self._file.tell() == 0:  # (a pipe: a new stream)
            self._file.write(FILE_HEAD)
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

    truncated: the file ends in a partial record (a crash mid-write); everything before it is
    readable, and `end` is where it starts. damaged: how many records damage hit, found so far (a
    damaged header while indexing, a checksum that fails when read; each record counted once,
    however often it is read).
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
        self.damaged = 0
        self._damaged_at: set[int] = set()  # offsets of the records counted in damaged
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            at = FILE_HEADER.size
            while at < size:
                f.seek(at)
                head = f.read(RECORD.size)
                if head.startswith(FILE_HEAD):
                    at += FILE_HEADER.size  # another recording joined on (cat a b > c)
                    continue
                if len(head) == RECORD.size:
                    magic, length, crc = RECORD.unpack(head)
                    if magic == RECORD_MAGIC and at + RECORD.size + length <= size:
                        self.offsets.append((at + RECORD.size, length, crc))
                        at += RECORD.size + length
                        continue
                at = self._resync(f, at, size)
        self.end = self.offsets[-1][0] + self.offsets[-1][1] if self.offsets else FILE_HEADER.size

    def _resync(self, f, at: int, size: int) -> int:
        """No record header at `at`: where the next intact record starts, or `size` (the tail
        is cut). The last indexed record may be what is damaged (its length, say, led here)."""
        if self.offsets and not self._intact(f, *self.offsets[-1]):
            at = self.offsets.pop()[0] - RECORD.size
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start = _first_whole(data, at + 1, size)
        if start >= 0:
            self.damaged += 1
            return start
        self.truncated = True
        return size

    def _recover(self, index: int) -> None:
        """Record `index` failed its checksum. If damage hit its length, the span it claimed
        may hold whole records (a length pointing at a later header, or at the file's end):
        those join the index after it. Scanned (and counted in damaged) once per record."""
        offset, length, _ = self.offsets[index]
        if not self._first_damage(offset):
            return
        found, end = [], offset + length
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = _first_whole(data, offset - RECORD.size + 1, end)
            while at >= 0:
                _, size, crc = RECORD.unpack_from(data, at)
                found.append((at + RECORD.size, size, crc))
                at = _first_whole(data, at + RECORD.size + size, end)
        self.offsets[index + 1:index + 1] = found

    def _first_damage(self, offset: int) -> bool:
        """Count the record at `offset` as damaged, once: whether this is the first time."""
        if offset in self._damaged_at:
            return False
        self._damaged_at.add(offset)
        self.damaged += 1
        return True

    @staticmethod
    def _intact(f, offset: int, length: int, crc: int) -> bool:
        f.seek(offset)
        return zlib.crc32(f.read(length)) == crc

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Frame:
        """The frame of record `index`; wire.WireError if damage hit it (after which whole
        records found inside the span it claimed follow it in the index)."""
        offset, length, crc = self.offsets[index]
        with open(self.path, "rb") as f:
            f.seek(offset)
            payload = f.read(length)
        if zlib.crc32(payload) != crc:
            self._recover(index % len(self))
            raise wire.WireError(f"record {index} of {self.path} is damaged (checksum mismatch)")
        try:
            return wire.decode(_unpack(payload))
        except wire.WireError:  # whole, but not a frame this version reads
            self._first_damage(offset)
            raise

    def __iter__(self):
        """Every readable frame in order; a damaged record is skipped (and counted in damaged)."""
        index = 0
        while index < len(self):  # (the index can grow: see _recover)
            try:
                yield self[index]
            except wire.WireError:
                pass
            index += 1


def _first_whole(data, start: int, limit: int) -> int:
    """Where the first record lying whole in data[start:limit] begins, else -1: found by its
    magic, and whole when its checksum holds and its payload decodes as a frame (bytes that
    only look like a record, inside pixels say, are passed over)."""
    at = data.find(RECORD_MAGIC, start, limit)
    while 0 <= at <= limit - RECORD.size:
        _, length, crc = RECORD.unpack_from(data, at)
        payload = at + RECORD.size
        if payload + length <= limit and zlib.crc32(data[payload:payload + length]) == crc:
            try:
                wire.decode(_unpack(data[payload:payload + length]))
                return at
            except wire.WireError:
                pass
        at = data.find(RECORD_MAGIC, at + 1, limit)
    return -1
