"""G.711 μ-law and A-law codecs, vectorised with lookup tables.

Bit-exact with ITU-T G.711 as implemented by CPython's ``audioop`` (width 2):
16-bit input is reduced to 14 bits (μ-law) or 13 bits (A-law) by an arithmetic
right shift before quantisation, exactly as audioop does. All four tables are
computed once at import and are read-only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ulaw_encode", "ulaw_decode", "alaw_encode", "alaw_decode"]

# Segment end points of the 8 logarithmic segments, in the reduced-width domain.
_ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], np.int32)
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], np.int32)
_ULAW_BIAS = 0x84  # 132: added so that every segment starts on a power of two
_ULAW_CLIP = 8159  # largest 14-bit magnitude μ-law can represent


def _every_int16() -> np.ndarray:
    """All int16 values, ordered so that index i holds the value whose uint16 view is i."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode_table() -> np.ndarray:
    pcm14 = _every_int16() >> 2
    negative = pcm14 < 0
    # Magnitude of the 14-bit value; negation of -8192 is clipped below.
    magnitude = np.where(negative, -pcm14, pcm14)
    magnitude = np.minimum(magnitude, _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude, side="left")
    mantissa = (magnitude >> (segment + 1)) & 0x0F
    # Beyond the last segment: saturate to the largest code.
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa)
    # μ-law transmits every bit inverted; the sign bit is set for positive values.
    mask = np.where(negative, 0x7F, 0xFF)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _build_ulaw_decode_table() -> np.ndarray:
    inverted = ~np.arange(256, dtype=np.int32) & 0xFF
    segment = (inverted & 0x70) >> 4
    magnitude = (((inverted & 0x0F) << 3) + _ULAW_BIAS) << segment
    linear = np.where(inverted & 0x80, _ULAW_BIAS - magnitude, magnitude - _ULAW_BIAS)
    return linear.astype(np.int16)


def _build_alaw_encode_table() -> np.ndarray:
    pcm13 = _every_int16() >> 3
    negative = pcm13 < 0
    # One's-complement magnitude: -1 maps to 0, so the range is symmetric.
    magnitude = np.where(negative, -pcm13 - 1, pcm13)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude, side="left")
    shift = np.where(segment < 2, 1, segment)
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)  # beyond the last segment: saturate
    # A-law inverts the even bits; the sign bit is set for non-negative values.
    mask = np.where(negative, 0x55, 0xD5)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _build_alaw_decode_table() -> np.ndarray:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (code & 0x70) >> 4
    magnitude = (code & 0x0F) << 4
    magnitude = np.where(
        segment == 0,
        magnitude + 8,
        (magnitude + 0x108) << np.maximum(segment - 1, 0),
    )
    linear = np.where(code & 0x80, magnitude, -magnitude)
    return linear.astype(np.int16)


def _pair_table(decode_table: np.ndarray) -> np.ndarray:
    """Decode two codes per lookup: index is the uint16 view of a byte pair, entry the two samples.

    Built from the native memory layout of both index and entry, so it is byte-order neutral.
    """
    byte_pairs = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(-1, 2)
    return np.ascontiguousarray(decode_table[byte_pairs]).view(np.uint32).reshape(-1)


def _frozen(table: np.ndarray) -> np.ndarray:
    table.flags.writeable = False
    return table


ULAW_ENCODE_TABLE = _frozen(_build_ulaw_encode_table())
ULAW_DECODE_TABLE = _frozen(_build_ulaw_decode_table())
ALAW_ENCODE_TABLE = _frozen(_build_alaw_encode_table())
ALAW_DECODE_TABLE = _frozen(_build_alaw_decode_table())
_ULAW_PAIR_DECODE_TABLE = _frozen(_pair_table(ULAW_DECODE_TABLE))
_ALAW_PAIR_DECODE_TABLE = _frozen(_pair_table(ALAW_DECODE_TABLE))

# Below this many bytes the per-call overhead of the pair path outweighs its halved gather.
_PAIR_DECODE_MIN_BYTES = 2048


def _as_uint16_index(pcm: np.ndarray) -> np.ndarray:
    """View 16-bit PCM as table indices; other dtypes are rounded and clipped to int16 first."""
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16:
        if pcm.dtype.kind == "f":
            pcm = np.rint(pcm)
        pcm = np.clip(pcm, -32768, 32767).astype(np.int16)
    return pcm.reshape(-1).view(np.uint16)


def _decode(data: bytes, table: np.ndarray, pair_table: np.ndarray) -> np.ndarray:
    codes = np.frombuffer(data, dtype=np.uint8)
    count = codes.size
    if count < _PAIR_DECODE_MIN_BYTES:
        return table.take(codes)
    pairs = count // 2
    out = np.empty(count, dtype=np.int16)
    pair_codes = np.frombuffer(data, dtype=np.uint16, count=pairs)
    np.take(pair_table, pair_codes, out=out[: 2 * pairs].view(np.uint32))
    if count % 2:
        out[-1] = table[codes[-1]]
    return out


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """Encode int16 PCM to μ-law bytes (one byte per sample)."""
    return ULAW_ENCODE_TABLE.take(_as_uint16_index(pcm)).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """Decode μ-law bytes to int16 PCM."""
    return _decode(data, ULAW_DECODE_TABLE, _ULAW_PAIR_DECODE_TABLE)


def alaw_encode(pcm: np.ndarray) -> bytes:
    """Encode int16 PCM to A-law bytes (one byte per sample)."""
    return ALAW_ENCODE_TABLE.take(_as_uint16_index(pcm)).tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    """Decode A-law bytes to int16 PCM."""
    return _decode(data, ALAW_DECODE_TABLE, _ALAW_PAIR_DECODE_TABLE)
