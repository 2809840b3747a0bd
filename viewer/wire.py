"""The wire format of one frame: `encode` a Frame into message parts, `decode` them back (torch-free).

A message is three parts (ZeroMQ multipart, or any transport that keeps part boundaries):

    header  fixed little-endian struct (HEADER below) followed by lo and hi, float32 [layers] each
    meta    UTF-8 JSON object of str -> str, at most MAX_META bytes (token text, model name, label)
    pixels  raw uint8, height * width bytes, row-major

The header is self-describing and versioned: magic b"NFLW", wire version, layout and norm codes,
session id and sequence number (u64), width, height, layers, hidden, step, token id, position,
batch row, rank, capture time (ns) and the byte length of the meta part. Never pickle.

`decode` trusts nothing: it checks the part count, magic, version, codes, dimension limits,
that hidden/width/height/layers describe one geometry (height == layers * ceil(hidden / width)),
and that every size in the header matches its part, all before it allocates or parses
anything; then that meta is valid UTF-8 JSON holding a str -> str object. Any failure raises
WireError saying what was wrong. Run `python -m pytest tests/test_wire.py` to check it.
"""

from __future__ import annotations

import json
import secrets
import struct

import numpy as np

from .frame import LAYOUTS, NORMS, Frame, chunks_per_layer

MAGIC = b"NFLW"
VERSION = 1
MAX_SIDE = 8192  # width and height limit, pixels
MAX_LAYERS = 1024
MAX_META = 4096  # bytes of UTF-8 JSON
MAX_PART = MAX_SIDE * MAX_SIDE  # bytes: the largest part of a message (pixels)

#          magic ver layout norm session seq  w h layers hidden step token pos  row rank time meta_len
HEADER = struct.Struct("<4sHBBQQIIIIqqqiiqI")

_RANGES = {  # Frame field -> inclusive range its header slot can hold
    "session": (0, 2**64 - 1),
    "seq": (0, 2**64 - 1),
    "step": (-(2**63), 2**63 - 1),
    "token_id": (-(2**63), 2**63 - 1),
    "position": (-(2**63), 2**63 - 1),
    "row": (-(2**31), 2**31 - 1),
    "rank": (-(2**31), 2**31 - 1),
    "time_ns": (-(2**63), 2**63 - 1),
}


class WireError(ValueError):
    """A message (or a frame to encode) that does not follow the wire format; says what was wrong."""


def new_session_id() -> int:
    """A random non-zero 64-bit session id, one per publishing engine."""
    return secrets.randbits(64) or 1


def encode(frame: Frame) -> list[bytes]:
    """Frame -> [header, meta, pixels], ready for `socket.send_multipart`.

    Copies the pixels, so the caller may reuse or overwrite its buffer as soon as this returns.
    Raises WireError if the frame cannot be represented (wrong dtype or shape, unknown layout,
    field out of range, metadata not str -> str or over MAX_META bytes).
    """
    pixels = frame.pixels
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise WireError(f"cannot encode: pixels must be a 2-D uint8 array, got {_describe(pixels)}")
    height, width = pixels.shape
    for name in ("layers", "hidden"):
        if not isinstance(getattr(frame, name), (int, np.integer)):
            raise WireError(f"cannot encode: {name} must be an integer, got {getattr(frame, name)!r}")
    check_geometry(width, height, frame.layers, frame.hidden, "cannot encode")
    if frame.layout not in LAYOUTS:
        raise WireError(f"cannot encode: unknown layout {frame.layout!r} (known: {', '.join(LAYOUTS)})")
    if frame.norm not in NORMS:
        raise WireError(f"cannot encode: unknown norm {frame.norm!r} (known: {', '.join(NORMS)})")
    for name, (low, high) in _RANGES.items():
        value = getattr(frame, name)
        if not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise WireError(f"cannot encode: {name}={value!r} is not an integer in [{low}, {high}]")
    bounds = []
    for name in ("lo", "hi"):
        try:
            values = np.asarray(getattr(frame, name), dtype="<f4").reshape(-1)
        except (TypeError, ValueError):
            raise WireError(f"cannot encode: {name}={getattr(frame, name)!r} is not numbers") from None
        if values.size != frame.layers:
            raise WireError(f"cannot encode: {name} has {values.size} values for {frame.layers} layers")
        bounds.append(values.tobytes())
    meta = frame.meta or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise WireError("cannot encode: meta must be a dict of str -> str")
    try:
        meta_bytes = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as e:
        raise WireError(f"cannot encode: meta is not valid Unicode ({e})") from None
    if len(meta_bytes) > MAX_META:
        raise WireError(f"cannot encode: meta is {len(meta_bytes)} bytes as JSON, limit {MAX_META}")
    header = HEADER.pack(
        MAGIC, VERSION, LAYOUTS.index(frame.layout), NORMS.index(frame.norm),
        int(frame.session), int(frame.seq), width, height, frame.layers, frame.hidden,
        int(frame.step), int(frame.token_id), int(frame.position), int(frame.row), int(frame.rank),
        int(frame.time_ns), len(meta_bytes),
    )
    return [header + bounds[0] + bounds[1], meta_bytes, np.ascontiguousarray(pixels).tobytes()]


def decode(parts) -> Frame:
    """[header, meta, pixels] (bytes, memoryviews or zmq.Frames) -> Frame; raises WireError.

    The returned pixels are a read-only numpy view of the pixels part (no copy): copy them
    before writing. lo and hi are fresh float32 arrays and may hold inf or NaN (a layer whose
    activations were not finite); meta is a fresh dict.
    """
    try:
        count = len(parts)
    except TypeError:
        raise WireError(f"expected a sequence of 3 message parts, got {type(parts).__name__}") from None
    if count != 3:
        raise WireError(f"expected 3 message parts (header, meta, pixels), got {count}")
    try:
        header, meta_part, pixel_part = (memoryview(p).cast("B") for p in parts)
    except TypeError as e:
        raise WireError(f"message parts must be bytes-like: {e}") from None

    if len(header) < HEADER.size:
        raise WireError(f"truncated header: {len(header)} bytes, need at least {HEADER.size}")
    (magic, version, layout, norm, session, seq, width, height, layers, hidden,
     step, token_id, position, row, rank, time_ns, meta_len) = HEADER.unpack_from(header)
    if magic != MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}: not a neuralflow frame")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version} (this build reads version {VERSION})")
    if layout >= len(LAYOUTS):
        raise WireError(f"unknown layout code {layout} (known: 0..{len(LAYOUTS) - 1})")
    if norm >= len(NORMS):
        raise WireError(f"unknown norm code {norm} (known: 0..{len(NORMS) - 1})")
    check_geometry(width, height, layers, hidden, "bad header")
    if len(header) != HEADER.size + 8 * layers:
        raise WireError(
            f"header part is {len(header)} bytes; {layers} layers need {HEADER.size + 8 * layers} "
            f"({HEADER.size} fixed + lo/hi float32 x {layers} each)")
    if meta_len > MAX_META:
        raise WireError(f"metadata length {meta_len} exceeds the {MAX_META}-byte limit")
    if len(meta_part) != meta_len:
        raise WireError(f"header says {meta_len} metadata bytes, meta part has {len(meta_part)}")
    if len(pixel_part) != width * height:
        raise WireError(
            f"header says {height}x{width} = {width * height} pixel bytes, pixel part has {len(pixel_part)}")

    meta = _decode_meta(meta_part)
    bounds = np.frombuffer(header, dtype="<f4", count=2 * layers, offset=HEADER.size).astype(np.float32)
    pixels = np.frombuffer(pixel_part, dtype=np.uint8).reshape(height, width)
    pixels.flags.writeable = False
    return Frame(
        pixels=pixels, layers=layers, hidden=hidden, layout=LAYOUTS[layout], norm=NORMS[norm],
        lo=bounds[:layers], hi=bounds[layers:], step=step, token_id=token_id, position=position,
        row=row, rank=rank, time_ns=time_ns, session=session, seq=seq, meta=meta,
    )


def check_geometry(width: int, height: int, layers: int, hidden: int, what: str) -> None:
    """Raise WireError (starting with `what`) unless a frame of this shape fits the format."""
    if not 1 <= width <= MAX_SIDE or not 1 <= height <= MAX_SIDE:
        raise WireError(f"{what}: {height}x{width} pixels is outside 1..{MAX_SIDE} per side")
    if not 1 <= layers <= MAX_LAYERS:
        raise WireError(f"{what}: {layers} layers is outside 1..{MAX_LAYERS}")
    if hidden < 1 or layers * chunks_per_layer(hidden, width) != height:
        raise WireError(
            f"{what}: hidden={hidden} does not fit {height}x{width} with {layers} layers "
            f"(need height == layers * ceil(hidden / width))")


def _decode_meta(data: memoryview) -> dict:
    try:
        text = str(data, "utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"metadata is not valid UTF-8: {e}") from None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise WireError(f"metadata is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise WireError(f"metadata must be a JSON object, got {type(meta).__name__}")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise WireError(f"metadata value for {key!r} must be a string, got {type(value).__name__}")
        try:  # JSON escapes can smuggle in unpaired surrogates, which no UTF-8 encoder accepts
            key.encode("utf-8"), value.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError(f"metadata entry {key!r} holds an unpaired surrogate escape") from None
    return meta


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__
