"""Scenario 7: conflict prediction. How long `aidp ws conflicts` takes on 20 workstreams that each
changed a few files, some of them the same ones: fast enough to run after every run? The reference
is what it replaces: `git merge-tree --write-tree` on every pair, one after the other."""

from __future__ import annotations

import subprocess
from itertools import combinations
from pathlib import Path

from bench.common import Params, Row, Section, Stopwatch, alternate, fmt_ms, fmt_ratio, median
from bench.fixtures import ENV, aidp_cli, create_workstreams, make_repo, sh

FILES = 30  # files in the repository
GROUPS = 5  # workstream i also appends to shared-(i % GROUPS).txt: those of a group conflict pairwise


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, stdout=subprocess.DEVNULL)


async def run(p: Params) -> list[Section]:
    repo = make_repo(p.work / "conflicts", ["true"])
    for name in [f"file-{i:02d}.txt" for i in range(FILES)] + [f"shared-{g}.txt" for g in range(GROUPS)]:
        (repo / name).write_text("".join(f"line {n}\n" for n in range(50)))
    git(repo, "add", "-A", "--", ".")
    git(repo, "commit", "-q", "-m", "files")
    slugs = [f"ws-{i:02d}" for i in range(p.conflicts_n)]
    await create_workstreams(repo, slugs)
    for i, slug in enumerate(slugs):
        tree = repo / ".worktrees" / slug
        for name in (f"file-{i % FILES:02d}.txt", f"file-{(i + 7) % FILES:02d}.txt", f"shared-{i % GROUPS}.txt"):
            with (tree / name).open("a") as f:
                f.write(f"added by {slug}\n")
        git(tree, "commit", "-q", "-a", "-m", f"{slug} changes three files")
    heads = [f"aidp/{slug}" for slug in slugs]
    pairs = list(combinations(heads, 2))

    async def aidp_conflicts() -> float:
        with Stopwatch() as watch:
            done = subprocess.run([*aidp_cli(), "ws", "conflicts"], cwd=repo, env=ENV, capture_output=True, check=False)
        assert done.returncode == 1, done.stderr  # exit 1: there are conflicts, as built
        return watch.elapsed

    async def every_pair() -> float:
        with Stopwatch() as watch:
            for a, b in pairs:
                subprocess.run(
                    ["git", "merge-tree", "--write-tree", "--name-only", a, b],
                    cwd=repo,
                    env=ENV,
                    stdout=subprocess.DEVNULL,
                    check=False,
                )
        return watch.elapsed

    async def ws_list() -> float:
        return sh([*aidp_cli(), "ws", "list"], cwd=repo)

    names = {
        "aidp ws conflicts": aidp_conflicts,
        "aidp ws list (with change summaries)": ws_list,
        f"git merge-tree × {len(pairs)} pairs, sequential": every_pair,
    }
    times = await alternate(p.conflicts_reps, names)
    reference = median(times[f"git merge-tree × {len(pairs)} pairs, sequential"])
    section = Section("conflicts", "Conflict prediction")
    for name, values in times.items():
        m = median(values)
        section.rows.append(Row(name, fmt_ms(m), f"min {fmt_ms(min(values))}", fmt_ratio(m / reference)))
    section.figures = {"times_s": times, "workstreams": p.conflicts_n, "pairs": len(pairs)}
    section.notes.append(
        f"{p.conflicts_n} workstreams, each appending to three files of {FILES + GROUPS}; those that share a "
        f"`shared-N.txt` ({GROUPS} groups) conflict pairwise. `aidp ws conflicts` is the whole CLI process: "
        "each workstream against its base branch and every pair, by `git merge-tree --write-tree` (nothing "
        "checked out), after ruling out the pairs that forked from the same commit, share no commit and "
        "changed no path in common. The reference merges every pair with `git merge-tree`, one after the "
        f"other. {p.conflicts_reps} repetitions, order rotated, medians; ratio = against the reference."
    )
    return [section]
