"""Admission control: trusted networks (CIDR) and per-source token buckets."""

from __future__ import annotations

import pytest

from agentd.sip.security import RateLimiter, is_trusted, parse_networks


def test_cidr_membership() -> None:
    nets = parse_networks(["192.0.2.0/24", "10.1.2.3", "2001:db8::/32", "127.0.0.2/32"])
    assert is_trusted("192.0.2.1", nets) and is_trusted("192.0.2.255", nets)
    assert not is_trusted("192.0.3.1", nets)
    assert is_trusted("10.1.2.3", nets) and not is_trusted("10.1.2.4", nets)
    assert is_trusted("2001:db8::5", nets) and not is_trusted("2001:db9::5", nets)
    assert is_trusted("127.0.0.2", nets) and not is_trusted("127.0.0.1", nets)


def test_non_strict_network_and_bad_values() -> None:
    nets = parse_networks(["192.0.2.77/24"])  # host bits set: the network is meant
    assert is_trusted("192.0.2.1", nets)
    with pytest.raises(ValueError):
        parse_networks(["not-a-network"])
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/33"])


@pytest.mark.parametrize("host", ["", "pbx.example", "192.0.2.1.5", "::ffff:zz", "-1"])
def test_unparseable_hosts_are_not_trusted(host: str) -> None:
    assert not is_trusted(host, parse_networks(["0.0.0.0/0", "::/0"]))


def test_ipv4_mapped_ipv6_source_matches_ipv4_network() -> None:
    """A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d."""
    nets = parse_networks(["192.0.2.0/24"])
    assert is_trusted("::ffff:192.0.2.9", nets)
    assert not is_trusted("::ffff:198.51.100.9", nets)


def test_empty_trust_list_trusts_nobody() -> None:
    assert not is_trusted("127.0.0.1", ())


def test_token_bucket_burst_then_refill() -> None:
    limiter = RateLimiter(per_second=10.0, burst=5)
    assert all(limiter.allow("a", 0.0) for _ in range(5))
    assert not limiter.allow("a", 0.0)
    assert limiter.refused == 1
    assert not limiter.allow("a", 0.05)  # half a token
    assert limiter.allow("a", 0.15)  # 1.5 tokens since t=0 minus the half one refused... one
    assert not limiter.allow("a", 0.15)
    # A long pause refills only up to the burst.
    assert sum(limiter.allow("a", 100.0) for _ in range(20)) == 5
    assert limiter.refused == 3 + 15


def test_sources_are_independent() -> None:
    limiter = RateLimiter(per_second=1.0, burst=2)
    assert limiter.allow("a", 0.0) and limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)


def test_clock_going_backwards_gives_no_tokens() -> None:
    limiter = RateLimiter(per_second=10.0, burst=1)
    assert limiter.allow("a", 100.0)
    assert not limiter.allow("a", 50.0)
    assert not limiter.allow("a", 100.0)


def test_table_is_bounded_and_forgets_least_recent() -> None:
    limiter = RateLimiter(per_second=0.001, burst=1, max_sources=3)
    for source in ("a", "b", "c"):
        assert limiter.allow(source, 0.0)
    assert not limiter.allow("a", 0.0)  # "a" is now the most recent
    assert limiter.allow("d", 0.0)  # evicts "b", the least recently seen
    assert len(limiter._buckets) == 3
    assert not limiter.allow("a", 0.0)  # still remembered: still empty
    assert limiter.allow("b", 0.0)  # forgotten: a fresh bucket


def test_many_sources_keep_the_table_bounded() -> None:
    limiter = RateLimiter(per_second=1.0, burst=1, max_sources=100)
    for i in range(10_000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}", float(i))
    assert len(limiter._buckets) == 100


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bad_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)
