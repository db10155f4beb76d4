"""Admission control for SIP requests, sans-IO: who may call us, and how fast strangers may talk.

Only the PBX (configured networks) may send INVITEs; anything else gets 403. Requests from
addresses outside those networks are rate-limited per source with a token bucket, so a
scanner cannot make the daemon spend its time parsing and answering.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """'192.0.2.0/24', '127.0.0.1' -> networks (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def is_trusted(host: str, networks: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket names IPv4 peers ::ffff:a.b.c.d
    return any(address in network for network in networks)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Per-source token buckets; the table is bounded (least recently seen sources go first)."""

    def __init__(self, per_second: float, burst: int, max_sources: int = 4096) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("rate limit needs per_second > 0 and burst >= 1")
        self.per_second = per_second
        self.burst = burst
        self._max_sources = max_sources
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0

    def allow(self, source: str, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = _Bucket(tokens=float(self.burst), updated=now)
            self._buckets[source] = bucket
            while len(self._buckets) > self._max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.per_second)
            bucket.updated = max(bucket.updated, now)  # an earlier `now` must not earn tokens
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.refused += 1
        return False
