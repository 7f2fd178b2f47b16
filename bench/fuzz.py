"""Fuzz the codec and the TTN JSON parser: only their own error types may escape.

    python bench/fuzz.py                 # 100,000 hypothesis cases per target
    python bench/fuzz.py --cases 2000    # a quick run
    python bench/fuzz.py --atheris 60    # also 60 s of coverage-guided atheris per target

Targets: `decode_uplink(port, bytes)` (may raise ProtocolError only) and
`bridge.ttn.parse_message(body)` (may raise TTNMessageError only), fed with random bytes,
mutated valid payloads and structurally plausible TTN documents with wrong types in every field.
The test suite runs a bounded version of the same strategies (tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.ttn import (  # noqa: E402
    DownlinkEvent,
    IgnoredMessage,
    TTNMessageError,
    Uplink,
    parse_message,
)
from node_firmware.protocol import ProtocolError, decode_uplink  # noqa: E402

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


field_or_junk = st.one_of(json_values, st.just(None))
payloads = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=51, max_size=51),
    st.binary(min_size=39, max_size=39),
    st.binary(min_size=5, max_size=5),
)


@st.composite
def ttn_documents(draw: st.DrawFn) -> Any:
    """A TTN-shaped document where any field may be missing or of the wrong type."""
    kind = draw(
        st.sampled_from(
            [
                "uplink_message",
                "downlink_ack",
                "downlink_nack",
                "downlink_sent",
                "downlink_queued",
                "downlink_failed",
                "join_accept",
                "other",
            ]
        )
    )

    def maybe(value: Any) -> Any:
        return draw(st.one_of(st.just(value), field_or_junk))

    body: dict[str, Any] = {
        "f_port": maybe(draw(st.integers(-5, 300))),
        "f_cnt": maybe(draw(st.integers(-5, 2**40))),
        "frm_payload": maybe(_b64(draw(payloads))),
        "correlation_ids": maybe([draw(st.text(max_size=20))]),
        "rx_metadata": maybe(
            [
                {
                    "rssi": maybe(-80),
                    "snr": maybe(7.5),
                    "gateway_ids": maybe({"gateway_id": maybe("gw")}),
                }
            ]
        ),
        "settings": maybe(
            {
                "data_rate": maybe(
                    {"lora": maybe({"spreading_factor": maybe(7), "bandwidth": maybe(125000)})}
                )
            }
        ),
    }
    if kind == "downlink_failed":
        body = {"downlink": maybe(body), "error": maybe({"name": maybe("max_retries_reached")})}
    doc: dict[str, Any] = {
        "end_device_ids": maybe(
            {
                "device_id": maybe(draw(st.text(min_size=0, max_size=12))),
                "application_ids": maybe({"application_id": maybe("app")}),
            }
        ),
        "received_at": maybe(
            draw(
                st.sampled_from(
                    [
                        "2026-11-23T01:02:03.123456789Z",
                        "2026-11-23T01:02:03Z",
                        "yesterday",
                        "",
                        "2026-13-45T99:99:99Z",
                    ]
                )
            )
        ),
        "correlation_ids": maybe(["as:up:01"]),
    }
    if kind != "other":
        doc[kind] = maybe(body)
    return doc


bodies = st.one_of(
    st.binary(max_size=200),
    ttn_documents().map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda d: json.dumps(d).encode()),
)


def check_codec(port: int, data: bytes) -> None:
    """Decode; a success must be a port the protocol defines with a length it allows."""
    try:
        decode_uplink(port, data)
    except ProtocolError:
        return
    assert port in (1, 2) and len(data) in (51, 39, 5), (port, data.hex())


def check_parser(body: bytes) -> None:
    """Parse; a success must carry a device id, and an uplink counters in range."""
    try:
        message = parse_message(body)
    except TTNMessageError:
        return
    assert isinstance(message, Uplink | DownlinkEvent | IgnoredMessage)
    assert message.device_id
    if isinstance(message, Uplink):
        assert 0 <= message.f_port <= 255 and 0 <= message.f_cnt < 2**32


def run_hypothesis(cases: int) -> list[tuple[str, int, float]]:
    """Run both targets for `cases` examples each; returns (target, cases, seconds)."""
    conf = settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    results = []

    @conf
    @given(st.integers(0, 255), payloads)
    def codec(port: int, data: bytes) -> None:
        check_codec(port, data)

    @conf
    @given(bodies)
    def parser(body: bytes) -> None:
        check_parser(body)

    for name, target in (("decode_uplink", codec), ("parse_message", parser)):
        started = time.perf_counter()
        target()
        results.append((name, cases, time.perf_counter() - started))
        print(f"{name}: {cases} cases, no unexpected exception", flush=True)
    return results


ATHERIS_TARGET = """
import sys, atheris
with atheris.instrument_imports():
    from bridge.ttn import TTNMessageError, parse_message
    from node_firmware.protocol import ProtocolError, decode_uplink

def test(data):
    fdp = atheris.FuzzedDataProvider(data)
    port = fdp.ConsumeIntInRange(0, 255)
    rest = fdp.ConsumeBytes(len(data))
    try:
        decode_uplink(port, rest)
    except ProtocolError:
        pass
    try:
        parse_message(rest)
    except TTNMessageError:
        pass

atheris.Setup(sys.argv, test)
atheris.Fuzz()
"""


def run_atheris(seconds: int) -> tuple[str, int, float] | None:
    """Coverage-guided fuzzing of both targets in a child process, if atheris is installed."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: skipping the coverage-guided run")
        return None
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            ATHERIS_TARGET,
            f"-max_total_time={seconds}",
            "-print_final_stats=1",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    runs = 0
    for line in proc.stderr.splitlines():
        if "stat::number_of_executed_units" in line:
            runs = int(line.split(":")[-1])
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit("atheris found a crash (see above)")
    print(f"atheris: {runs} executions in {seconds} s, no crash")
    return ("atheris (both targets)", runs, time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--atheris", type=int, default=0, metavar="SECONDS")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the run (bench/HISTORY.md, BENCHMARKS.md)",
    )
    args = parser.parse_args()
    results = run_hypothesis(args.cases)
    if args.atheris:
        extra = run_atheris(args.atheris)
        if extra:
            results.append(extra)
    rows = [[name, f"{n:,}", f"{secs:.1f}", "none"] for name, n, secs in results]
    if not args.no_record:
        from bench.common import append_section, markdown_table

        append_section(
            "Fuzzing: codec and TTN parser",
            " ".join(["python bench/fuzz.py", *sys.argv[1:]]),
            markdown_table(["target", "cases", "seconds", "unexpected exceptions"], rows),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
