"""Tests for the wire format (neuralflow.viewer.wire): roundtrips, every validation error, fuzzing."""

import json
import struct

import numpy as np
import pytest

from neuralflow.viewer import wire
from neuralflow.viewer.frame import LAYOUTS, NORMS, Frame, chunks_per_layer
from neuralflow.viewer.wire import HEADER, MAX_META, WireError, decode, encode


def random_frame(rng, layers=None, width=None, hidden=None) -> Frame:
    layers = layers or int(rng.integers(1, 40))
    hidden = hidden or int(rng.integers(1, 2000))
    width = width or int(rng.integers(-(-hidden // 100), 300))  # at most 100 rows per layer
    height = layers * chunks_per_layer(hidden, width)
    return Frame(
        pixels=rng.integers(0, 256, (height, width), dtype=np.uint8),
        layers=layers, hidden=hidden,
        layout=LAYOUTS[rng.integers(len(LAYOUTS))], norm=NORMS[rng.integers(len(NORMS))],
        lo=rng.standard_normal(layers).astype(np.float32), hi=rng.standard_normal(layers).astype(np.float32),
        step=int(rng.integers(0, 2**40)), token_id=int(rng.integers(-1, 2**17)), position=int(rng.integers(0, 2**20)),
        row=int(rng.integers(0, 64)), rank=int(rng.integers(0, 8)), time_ns=int(rng.integers(0, 2**62)),
        session=int(rng.integers(0, 2**63)) * 2 + 1, seq=int(rng.integers(0, 2**62)),
        meta={"token": "".join(chr(c) for c in rng.integers(32, 0x3000, int(rng.integers(0, 20)))),
              "model": "mistral-7b", "emoji": "\U0001F9E0"},
    )


def assert_same(a: Frame, b: Frame):
    assert a.pixels.shape == b.pixels.shape and np.array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.lo, b.lo)
    np.testing.assert_array_equal(a.hi, b.hi)
    for name in ("layers", "hidden", "layout", "norm", "step", "token_id", "position", "row", "rank",
                 "time_ns", "session", "seq", "meta"):
        assert getattr(a, name) == getattr(b, name), name


def test_roundtrip_random_frames():
    rng = np.random.default_rng(0)
    for _ in range(300):
        frame = random_frame(rng)
        back = decode(encode(frame))
        assert_same(frame, back)
        assert back.lo.dtype == np.float32 and back.hi.dtype == np.float32
        assert back.pixels.dtype == np.uint8 and not back.pixels.flags.writeable  # documented read-only view


def test_roundtrip_mistral_shape_and_extremes():
    frame = Frame(pixels=np.arange(256 * 512, dtype=np.uint32).astype(np.uint8).reshape(256, 512),
                  layers=32, hidden=4096, session=2**64 - 1, seq=2**64 - 1, step=-(2**63), token_id=2**63 - 1,
                  row=-(2**31), rank=2**31 - 1, time_ns=-1, meta={})
    frame.lo[3], frame.hi[4] = np.nan, np.inf
    parts = encode(frame)
    assert [len(p) for p in parts] == [HEADER.size + 8 * 32, 2, 256 * 512]
    assert_same(frame, decode(parts))
    assert decode([bytearray(p) for p in parts]).seq == 2**64 - 1  # any bytes-like part
    assert decode([memoryview(p) for p in parts]).meta == {}


def test_encode_copies_pixels_and_accepts_views():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (64, 40), dtype=np.uint8)
    frame = Frame(pixels=base.T, layers=4, hidden=640)  # non-contiguous, 40 x 64
    parts = encode(frame)
    expected = base.T.copy()
    base[:] = 0  # the caller reuses its buffer
    assert np.array_equal(decode(parts).pixels, expected)


def ok_frame(**changes) -> Frame:
    frame = Frame(pixels=np.zeros((8, 16), np.uint8), layers=4, hidden=32, meta={"a": "b"})
    return frame.replace(**changes)


@pytest.mark.parametrize("changes, message", [
    (dict(pixels=np.zeros((8, 16), np.float32)), "uint8"),
    (dict(pixels=np.zeros((8, 16, 3), np.uint8)), "2-D"),
    (dict(pixels=[[0]]), "uint8"),
    (dict(layout="spiral"), "layout"),
    (dict(norm="global"), "norm"),
    (dict(layers=3), "hidden=32 does not fit"),
    (dict(hidden=100), "does not fit"),
    (dict(layers=2.0), "layers must be an integer"),
    (dict(seq=-1), "seq"),
    (dict(session=2**64), "session"),
    (dict(row=2**31), "row"),
    (dict(step=1.5), "step"),
    (dict(lo=np.zeros(3, np.float32)), "lo has 3 values"),
    (dict(hi=["a", "b"]), "not numbers"),
    (dict(meta={"a": 1}), "str -> str"),
    (dict(meta=["a"]), "str -> str"),
    (dict(meta={"a": "x" * MAX_META}), "limit"),
    (dict(meta={"a": "\ud800"}), "Unicode"),
    (dict(pixels=np.zeros((0, 16), np.uint8)), "outside"),
])
def test_encode_rejects_bad_frames(changes, message):
    with pytest.raises(WireError, match=message):
        encode(ok_frame(**changes))


FIELDS = ("magic", "version", "layout", "norm", "session", "seq", "width", "height", "layers", "hidden",
          "step", "token_id", "position", "row", "rank", "time_ns", "meta_len")


def forged(header=None, meta=None, pixels=None, bounds=None, **fields) -> list[bytes]:
    """A valid 8x16, 4-layer message with some header fields, lo/hi bytes, or whole parts replaced."""
    parts = encode(ok_frame())
    values = dict(zip(FIELDS, HEADER.unpack_from(parts[0])))
    values.update(fields)
    bounds = parts[0][HEADER.size:] if bounds is None else bounds
    if meta is not None and "meta_len" not in fields:
        values["meta_len"] = len(meta)
    head = HEADER.pack(*(values[f] for f in FIELDS)) + bounds if header is None else header
    return [head, parts[1] if meta is None else meta, parts[2] if pixels is None else pixels]


@pytest.mark.parametrize("parts, message", [
    (forged()[:2], "expected 3 message parts"),
    (forged() + [b""], "expected 3 message parts"),
    (b"NFLW" * 100, "expected 3 message parts"),
    (42, "sequence"),
    ([b"", b"", object()], "bytes-like"),
    (forged(header=b""), "truncated header"),
    (forged(header=encode(ok_frame())[0][:HEADER.size - 1]), "truncated header"),
    (forged(magic=b"NFLX"), "bad magic"),
    (forged(version=2), "unsupported wire version 2"),
    (forged(version=0), "unsupported wire version 0"),
    (forged(layout=2), "unknown layout code 2"),
    (forged(norm=200), "unknown norm code 200"),
    (forged(width=0), "outside"),
    (forged(width=8193, hidden=8193 * 2), "outside"),
    (forged(height=8193), "outside"),
    (forged(width=2**32 - 1, height=2**32 - 1), "outside"),
    (forged(layers=0), "layers is outside"),
    (forged(layers=1025), "layers is outside"),
    (forged(hidden=0), "hidden=0 does not fit"),
    (forged(hidden=33), "hidden=33 does not fit"),
    (forged(hidden=16), "hidden=16 does not fit"),
    (forged(layers=8, hidden=16), "header part is"),  # geometry fits, lo/hi missing
    (forged(bounds=bytes(8 * 4 + 4)), "header part is"),
    (forged(header=encode(ok_frame())[0][:-1]), "header part is"),
    (forged(meta_len=3), "header says 3 metadata bytes"),
    (forged(meta=b'{"a":"b"}', meta_len=4), "header says 4 metadata bytes"),
    (forged(meta_len=MAX_META + 1), "exceeds"),
    (forged(meta=b"{" * (MAX_META + 1)), "exceeds"),
    (forged(meta=b'{"a":"\xff"}'), "not valid UTF-8"),
    (forged(meta=b'{"a":"\xed\xa0\x80"}'), "not valid UTF-8"),  # an encoded surrogate
    (forged(meta=b'{"a":"\\ud800"}'), "unpaired surrogate"),
    (forged(meta=b'{"a":'), "not valid JSON"),
    (forged(meta=b""), "not valid JSON"),
    (forged(meta=b"[" * 4000 + b"]" * 4000), "metadata"),  # deep nesting within the size cap
    (forged(meta=b'["a","b"]'), "must be a JSON object"),
    (forged(meta=b'"ab"'), "must be a JSON object"),
    (forged(meta=b'{"a":1}'), "must be a string"),
    (forged(meta=b'{"a":{"b":"c"}}'), "must be a string"),
    (forged(meta=b'{"a":null}'), "must be a string"),
    (forged(meta=b'{"a":"b\x01"}'), "not valid JSON"),  # raw control character
    (forged(pixels=b""), "pixel part has 0"),
    (forged(pixels=bytes(8 * 16 - 1)), "pixel part has 127"),
    (forged(pixels=bytes(8 * 16 + 1)), "pixel part has 129"),
    (forged(height=8192, width=8192, layers=1024, hidden=8 * 8192, bounds=bytes(8 * 1024)), "pixel part has 128"),  # huge, no payload
])
def test_decode_rejects(parts, message):
    with pytest.raises(WireError, match=message):
        decode(parts)


def test_decode_accepts_forged_but_valid_variants():
    # The same bytes described with another valid geometry: 8x16 as 2 layers of 64 dims.
    frame = decode(forged(layers=2, hidden=64, bounds=np.array([0, 1, 2, 3], "<f4").tobytes()))
    assert (frame.layers, frame.hidden, frame.height, frame.width) == (2, 64, 8, 16)
    assert frame.lo.tolist() == [0, 1] and frame.hi.tolist() == [2, 3]
    assert decode(forged(meta=b'{"a":"b","a":"c"}')).meta == {"a": "c"}  # JSON's last-wins duplicates


def mutate(rng, parts: list[bytes]) -> list[bytes]:
    """One random corruption of a valid message."""
    parts = [bytearray(p) for p in parts]
    kind = rng.integers(9)
    i = int(rng.integers(3))
    if kind == 0 and parts[i]:  # truncate a part
        parts[i] = parts[i][: int(rng.integers(len(parts[i])))]
    elif kind == 1 and parts[i]:  # flip a few bits
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(len(parts[i])))
            parts[i][j] ^= 1 << int(rng.integers(8))
    elif kind == 2:  # lie about one header field
        field = int(rng.integers(1, len(FIELDS)))
        values = list(HEADER.unpack_from(parts[0]))
        code = HEADER.format[field + 2]  # skip "<4s"
        bits = 8 * struct.calcsize(code)
        low = -(2 ** (bits - 1)) if code.islower() else 0
        values[field] = low + int(rng.integers(0, 2**62)) * int(rng.integers(1, 5)) % (2**bits)
        parts[0][: HEADER.size] = HEADER.pack(*values)
    elif kind == 3:  # append junk
        parts[i] += rng.bytes(int(rng.integers(1, 64)))
    elif kind == 4:  # replace a part with random bytes
        parts[i] = bytearray(rng.bytes(int(rng.integers(0, 400))))
    elif kind == 5:  # drop or add parts
        return [bytes(p) for p in parts[: int(rng.integers(3))]] if rng.random() < 0.5 else [bytes(p) for p in parts] + [b"x"]
    elif kind == 6:  # bad UTF-8 or non-JSON metadata, header length kept honest or not
        parts[1] = bytearray(rng.choice([b'{"a":"\xc3\x28"}', b"\xff\xfe", b'{"a":"b"', b"[]", b'{"a":[]}']))
        if rng.random() < 0.5:
            values = list(HEADER.unpack_from(parts[0]))
            values[-1] = len(parts[1])
            parts[0][: HEADER.size] = HEADER.pack(*values)
    elif kind == 7:  # huge dimensions
        values = list(HEADER.unpack_from(parts[0]))
        values[6:10] = [int(x) for x in rng.integers(0, 2**32, 4)]
        parts[0][: HEADER.size] = HEADER.pack(*values)
    # kind 8: unchanged
    return [bytes(p) for p in parts]


def fuzz_messages(seed: int, count: int):
    """(parts, decoded frame or None if decode raised WireError) for mutated and random messages."""
    rng = np.random.default_rng(seed)
    bases = [encode(random_frame(rng, layers=int(rng.integers(1, 6)), width=int(rng.integers(1, 40)),
                                 hidden=int(rng.integers(1, 90)))) for _ in range(20)]
    for _ in range(count):
        if rng.random() < 0.1:
            parts = [rng.bytes(int(rng.integers(0, 300))) for _ in range(int(rng.integers(0, 5)))]
        else:
            parts = mutate(rng, bases[int(rng.integers(len(bases)))])
        try:
            frame = decode(parts)
        except WireError as e:
            assert str(e), "a WireError must say what was wrong"
            frame = None
        yield parts, frame


def test_fuzz_decode_only_raises_wire_error_and_decodes_consistently():
    rejected = 0
    for parts, frame in fuzz_messages(seed=2, count=20000):
        if frame is None:
            rejected += 1
            continue
        # Accepted: the frame must describe exactly these bytes.
        again = encode(frame)
        assert again[0] == parts[0] and again[2] == parts[2]
        assert frame.meta == json.loads(parts[1])
    assert 10000 < rejected < 20000  # most mutations break the message, some (e.g. a pixel flip) don't


def test_new_session_id_is_random_u64():
    ids = {wire.new_session_id() for _ in range(100)}
    assert len(ids) == 100 and all(0 < i < 2**64 for i in ids)
