"""Interop test harness: real Kamailio, baresip and SIPp started on loopback by the tests.

Every process binds 127.0.0.1 only, lives in its own process group (killed as a whole on
stop) and every wait is bounded.
"""
