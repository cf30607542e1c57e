"""`python -m bench --check`: the ratios measured now against those committed in docs/benchmarks.md.

Run by hand before a change to the executor lands (not part of `make test`). Only ratios are
compared, never absolute times: the machine's load moves both sides of a ratio together. A row
counts when it measures aidp (its label names aidp) and both the page and this run have its ratio;
it is a regression when it grew by more than the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.common import Section

DEFAULT_TOLERANCE = 0.15  # noise between two runs of the same code on this machine is ~10%


@dataclass(frozen=True)
class Compared:
    section: str
    what: str
    committed: float
    now: float

    @property
    def change(self) -> float:
        return self.now / self.committed - 1


def committed_ratios(page: Path) -> dict[tuple[str, str], float]:
    """(section title, row label) -> ratio, from the tables of the committed page."""
    found: dict[tuple[str, str], float] = {}
    title = ""
    for line in page.read_text().splitlines():
        if line.startswith("### "):
            title = line[4:]
        elif line.startswith("| ") and title:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 4 and (ratio := parse_ratio(cells[3])) is not None:
                found[(title, cells[0])] = ratio
    return found


def parse_ratio(cell: str) -> float | None:
    """`1.86x` -> 1.86; anything else (empty, a header) -> None."""
    if not cell.endswith("x"):
        return None
    try:
        return float(cell[:-1])
    except ValueError:
        return None


def compare(sections: list[Section], committed: dict[tuple[str, str], float]) -> list[Compared]:
    out = []
    for section in sections:
        for row in section.rows:
            now, before = parse_ratio(row.ratio), committed.get((section.title, row.what))
            if now is not None and before and "aidp" in row.what.lower():
                out.append(Compared(section.title, row.what, before, now))
    return out


def report(compared: list[Compared], tolerance: float) -> int:
    """Print every compared ratio; 1 when any grew past the tolerance (a regression)."""
    if not compared:
        print("no ratio to compare: run the full sizes (not --quick) of scenarios the page has")
        return 1
    regressions = [c for c in compared if c.change > tolerance]
    width = max(len(c.what) for c in compared)
    for c in compared:
        flag = "REGRESSION" if c in regressions else ("better" if c.change < -tolerance else "same")
        print(f"{c.what:<{width}}  committed {c.committed:.2f}x  now {c.now:.2f}x  {c.change:+.0%}  {flag}")
    print(f"{len(regressions)} regression(s) over {tolerance:.0%} among {len(compared)} ratios")
    return 1 if regressions else 0
