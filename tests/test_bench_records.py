"""bench/common.py keeps BENCHMARKS.md's top table: a run replaces its own rows in place, adds
new ones at the end, and leaves every other row and the text around the table alone."""

from __future__ import annotations

from pathlib import Path

from bench.common import BENCHMARKS_MD, LATEST_BEGIN, LATEST_END, update_latest


def rows_of(path: Path) -> list[list[str]]:
    table = path.read_text().split(LATEST_BEGIN, 1)[1].split(LATEST_END, 1)[0]
    return [
        [c.strip() for c in line.strip("|").split(" | ")] for line in table.strip().splitlines()[2:]
    ]


def test_a_run_replaces_its_rows_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(BENCHMARKS_MD.read_text())
    before = rows_of(path)
    core = next(i for i, r in enumerate(before) if r[0] == "bench/core.py")
    update_latest(
        "bench/core.py",
        [
            ("decode + reassemble, one core, slow / fast", "1 / 2 fragments/s", "bare 3 / 4/s"),
            ("a new figure", "5 ms", "—"),
        ],
        "2030-01-02",
        path,
    )
    after = rows_of(path)
    assert len(after) == len(before) + 1
    assert after[core][:5] == [
        "bench/core.py",
        "decode + reassemble, one core, slow / fast",
        "1 / 2 fragments/s",
        "bare 3 / 4/s",
        "2030-01-02",
    ]
    assert after[-1][:3] == ["bench/core.py", "a new figure", "5 ms"]
    assert [r for i, r in enumerate(after[:-1]) if i != core] == [
        r for i, r in enumerate(before) if i != core
    ]
    text = path.read_text()
    original = BENCHMARKS_MD.read_text()
    assert text.split(LATEST_BEGIN)[0] == original.split(LATEST_BEGIN)[0]
    assert text.split(LATEST_END)[1] == original.split(LATEST_END)[1]
