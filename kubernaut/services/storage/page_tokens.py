"""Keyset page tokens: the last row's time (µs since the epoch) and id, and a digest of
the listing's filter so that a token cannot be replayed against another filter (or another
listing). Opaque to callers, URL-safe base64."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import struct
import uuid
from typing import Final

_TOKEN: Final = struct.Struct(">Bq16s8s")
_VERSION: Final = 1
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)


class MalformedToken(ValueError):
    """Not a token this storage issued."""


class ForeignToken(ValueError):
    """A token issued for another filter or listing."""


def _digest(filter_key: str) -> bytes:
    return hashlib.sha256(filter_key.encode()).digest()[:8]


def encode(at: dt.datetime, row_id: uuid.UUID, filter_key: str) -> str:
    micros = (at - _EPOCH) // _MICROSECOND
    raw = _TOKEN.pack(_VERSION, micros, row_id.bytes, _digest(filter_key))
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode(token: str, filter_key: str) -> tuple[dt.datetime, uuid.UUID]:
    """The row the token names; MalformedToken or ForeignToken."""
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        version, micros, id_bytes, digest = _TOKEN.unpack(raw)
        at = _EPOCH + micros * _MICROSECOND
    except (UnicodeEncodeError, binascii.Error, struct.error, OverflowError) as exc:
        raise MalformedToken("malformed page token") from exc
    if version != _VERSION:
        raise MalformedToken("malformed page token")
    if digest != _digest(filter_key):
        raise ForeignToken("page token was issued for a different filter")
    return at, uuid.UUID(bytes=id_bytes)
