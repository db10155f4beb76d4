"""G.711 codecs: bit-exact with audioop, round trips, odd shapes and dtypes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from agentd.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # removed in Python 3.13
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop not available")

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


@needs_audioop
def test_ulaw_encode_matches_audioop_for_every_int16() -> None:
    assert ulaw_encode(ALL_PCM) == audioop.lin2ulaw(ALL_PCM.tobytes(), 2)


@needs_audioop
def test_alaw_encode_matches_audioop_for_every_int16() -> None:
    assert alaw_encode(ALL_PCM) == audioop.lin2alaw(ALL_PCM.tobytes(), 2)


@needs_audioop
@pytest.mark.parametrize("repeat", [1, 9, 40])  # short (byte table) and long (pair table) paths
def test_ulaw_decode_matches_audioop_for_every_code(repeat: int) -> None:
    data = ALL_CODES * repeat + b"\x00\x7f\x80"  # odd length exercises the trailing byte
    decoded = ulaw_decode(data)
    assert decoded.dtype == np.int16
    assert decoded.tobytes() == audioop.ulaw2lin(data, 2)


@needs_audioop
@pytest.mark.parametrize("repeat", [1, 9, 40])
def test_alaw_decode_matches_audioop_for_every_code(repeat: int) -> None:
    data = ALL_CODES * repeat + b"\x00\x55\xd5"
    decoded = alaw_decode(data)
    assert decoded.dtype == np.int16
    assert decoded.tobytes() == audioop.alaw2lin(data, 2)


def test_ulaw_round_trip_every_code() -> None:
    again = ulaw_encode(ulaw_decode(ALL_CODES))
    # μ-law has two zeros: 0x7F (negative zero) decodes to 0, and 0 encodes as 0xFF.
    expected = bytearray(ALL_CODES)
    expected[0x7F] = 0xFF
    assert again == bytes(expected)
    assert ulaw_decode(b"\x7f\xff").tolist() == [0, 0]


def test_alaw_round_trip_every_code() -> None:
    assert alaw_encode(alaw_decode(ALL_CODES)) == ALL_CODES


def test_known_values() -> None:
    # Silence and full-scale values of both laws.
    assert ulaw_encode(np.array([0, 32767, -32768], np.int16)) == b"\xff\x80\x00"
    assert alaw_encode(np.array([0, 32767, -32768], np.int16)) == b"\xd5\xaa\x2a"
    assert ulaw_decode(b"\x80\x00").tolist() == [32124, -32124]
    assert alaw_decode(b"\xaa\x2a").tolist() == [32256, -32256]


def test_encode_is_monotonic_in_decoded_value() -> None:
    # Quantisation must never reorder: a larger input never decodes smaller.
    for encode, decode in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        decoded = decode(encode(ALL_PCM)).astype(np.int32)
        assert np.all(np.diff(decoded) >= 0)
        # Error bounded by half the largest step (1024 for μ-law, 1024 for A-law).
        assert np.max(np.abs(decoded - ALL_PCM.astype(np.int32))) <= 1024


def test_empty_and_odd_inputs() -> None:
    assert ulaw_encode(np.zeros(0, np.int16)) == b""
    assert alaw_encode(np.zeros(0, np.int16)) == b""
    assert ulaw_decode(b"").shape == (0,)
    assert alaw_decode(b"").dtype == np.int16
    # Non-contiguous and 2-D int16 inputs are encoded in C order.
    pcm = np.arange(-800, 800, 5, dtype=np.int16)
    assert ulaw_encode(pcm[::2]) == ulaw_encode(pcm.copy()[::2].copy())
    assert alaw_encode(pcm.reshape(2, -1)) == alaw_encode(pcm)
    # bytearray and memoryview are accepted for decode.
    codes = ulaw_encode(pcm)
    assert np.array_equal(ulaw_decode(bytearray(codes)), ulaw_decode(memoryview(codes)))


def test_other_dtypes_are_clipped_to_int16() -> None:
    wide = np.array([40000, -40000, 100], dtype=np.int32)
    assert ulaw_encode(wide) == ulaw_encode(np.array([32767, -32768, 100], np.int16))
    assert alaw_encode(np.array([99.6], np.float64)) == alaw_encode(np.array([100], np.int16))


def test_decode_result_is_writable_copy() -> None:
    out = ulaw_decode(b"\xff" * 4000)
    out[0] = 5  # callers may mix into decoded audio in place
    assert ulaw_decode(b"\xff")[0] == 0
