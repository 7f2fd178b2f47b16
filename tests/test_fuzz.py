"""A bounded run of bench/fuzz.py's strategies: only the codec's and parser's own errors escape."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import bodies, check_codec, check_parser, payloads

BOUNDED = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))


@BOUNDED
@given(st.integers(0, 255), payloads)
def test_codec_raises_only_protocol_errors(port: int, data: bytes) -> None:
    check_codec(port, data)


@BOUNDED
@given(bodies)
def test_ttn_parser_raises_only_its_own_error(body: bytes) -> None:
    check_parser(body)
