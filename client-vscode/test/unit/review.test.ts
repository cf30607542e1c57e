import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  canLand,
  cannotLandData,
  cannotLandMessage,
  changeBadge,
  changesSuffix,
  changesTooltip,
  conflictItems,
  diffSides,
  fileDescription,
  fileNodeId,
  fileNodes,
  formatChanges,
  gitShow,
  hasChangedFiles,
  isFileNode,
  landConfirmation,
  landedMessage,
  noConflictsMessage,
  revFromQuery,
  reviewFlags,
  reviewTitle,
  sideQuery,
  type FileNode,
} from "../../src/core/review";
import { ErrorCodes, type ChangeSummary, type Diff, type FileChange } from "../../src/protocol";
import { ws } from "./fixtures";

function changes(extra: Partial<ChangeSummary> = {}): ChangeSummary {
  return { baseBranch: "main", mergeBase: "a".repeat(40), ahead: 2, behind: 0, files: 5, added: 120, removed: 8, dirty: false, conflicts: false, ...extra };
}

function file(path: string, status = "M", extra: Partial<FileChange> = {}): FileChange {
  return { path, status, added: 3, removed: 1, ...extra };
}

const MERGE_BASE = "b".repeat(40);
const HEAD = "c".repeat(40);

function diff(extra: Partial<Diff> = {}): Diff {
  return {
    slug: "x",
    baseBranch: "main",
    mergeBase: MERGE_BASE,
    head: HEAD,
    files: [file("src/a.ts"), file("new.txt", "A"), file("gone.txt", "D"), file("b.txt", "R100", { oldPath: "old/b.txt" })],
    patch: "",
    uncommitted: [file("src/a.ts"), file("scratch.txt", "?")],
    uncommittedPatch: "",
    truncated: true,
    ...extra,
  };
}

describe("change summary", () => {
  it("reads like the CLI: +added −removed · files", () => {
    assert.equal(formatChanges(changes()), "+120 −8 · 5 files");
    assert.equal(formatChanges(changes({ files: 1, added: 1, removed: 0 })), "+1 −0 · 1 file");
    assert.equal(formatChanges(changes({ files: 0, added: 0, removed: 0 })), "");
    assert.equal(formatChanges(null), "");
    assert.equal(formatChanges(undefined), "");
  });
  it("wears a conflict badge over a dirty one, and none when clean", () => {
    assert.equal(changeBadge(changes()), undefined);
    assert.equal(changeBadge(null), undefined);
    assert.deepEqual(changeBadge(changes({ dirty: true })), {
      badge: "M",
      tooltip: "uncommitted changes",
      color: "gitDecoration.modifiedResourceForeground",
    });
    const both = changeBadge(changes({ dirty: true, conflicts: true }));
    assert.equal(both?.badge, "!");
    assert.equal(both?.tooltip, "conflicts with main; uncommitted changes");
    // Not computed is not a conflict.
    assert.equal(changeBadge(changes({ conflicts: null })), undefined);
  });
  it("puts the summary and the badge words into the accessible label", () => {
    assert.deepEqual(changesSuffix(ws("x", "completed", { changes: changes({ conflicts: true }) })), ["+120 −8 · 5 files", "conflicts with main"]);
    assert.deepEqual(changesSuffix(ws("x", "completed", { changes: changes({ files: 0, dirty: true }) })), ["uncommitted changes"]);
    assert.deepEqual(changesSuffix(ws("x")), []);
  });
  it("says ahead, behind and the badges in the tooltip", () => {
    assert.deepEqual(changesTooltip(ws("x", "completed", { changes: changes({ behind: 1, ahead: 1, dirty: true }) })), [
      "Changes: +120 −8 · 5 files · 1 commit ahead, 1 behind main",
      "Uncommitted changes in the worktree.",
    ]);
    assert.deepEqual(changesTooltip(ws("x")), []);
  });
});

describe("review and land flags", () => {
  it("offers review for changed files and land for commits ahead, at rest and not landed", () => {
    assert.deepEqual(reviewFlags(ws("x", "completed", { changes: changes() })), ["canReview", "canLand"]);
    assert.deepEqual(reviewFlags(ws("x", "running", { changes: changes() })), ["canReview"]);
    assert.deepEqual(reviewFlags(ws("x", "landed", { changes: changes() })), ["canReview"]);
    assert.deepEqual(reviewFlags(ws("x", "completed", { changes: changes({ files: 0, ahead: 0 }) })), []);
    assert.deepEqual(reviewFlags(ws("x", "completed")), []);
    assert.equal(canLand(ws("x", "failed", { changes: changes({ ahead: 1 }) })), true);
    assert.equal(canLand(ws("x", "queued", { changes: changes() })), false);
  });
  it("has file children when files changed or the worktree is dirty", () => {
    assert.equal(hasChangedFiles(ws("x", "completed", { changes: changes() })), true);
    assert.equal(hasChangedFiles(ws("x", "completed", { changes: changes({ files: 0, dirty: true }) })), true);
    assert.equal(hasChangedFiles(ws("x", "completed", { changes: changes({ files: 0 }) })), false);
    assert.equal(hasChangedFiles(ws("x")), false);
  });
});

describe("changed files", () => {
  const nodes = fileNodes(diff());
  it("lists committed files, then uncommitted ones, with distinct ids", () => {
    assert.deepEqual(
      nodes.map((n) => [n.file.path, n.uncommitted]),
      [["src/a.ts", false], ["new.txt", false], ["gone.txt", false], ["b.txt", false], ["src/a.ts", true], ["scratch.txt", true]],
    );
    assert.equal(new Set(nodes.map(fileNodeId)).size, nodes.length);
  });
  it("describes each: folder, counts or binary, rename source, uncommitted", () => {
    const [a, , , renamed, dirtyA] = nodes;
    assert.ok(a && renamed && dirtyA);
    assert.equal(fileDescription(a), "src · +3 −1");
    assert.equal(fileDescription(renamed), "+3 −1 · renamed from old/b.txt");
    assert.equal(fileDescription({ slug: "x", file: file("img.png", "A", { added: null, removed: null }), uncommitted: false }), "binary");
    assert.equal(fileDescription(dirtyA), "src · +3 −1 · uncommitted");
  });
  it("knows a file node from anything else a command may get", () => {
    assert.equal(isFileNode(nodes[0]), true);
    assert.equal(isFileNode("x"), false);
    assert.equal(isFileNode(undefined), false);
    assert.equal(isFileNode({ slug: "x", file: {} }), false);
  });
});

describe("diff sides", () => {
  const d = diff();
  const node = (path: string, uncommitted = false): FileNode => {
    const found = fileNodes(d).find((n) => n.file.path === path && n.uncommitted === uncommitted);
    assert.ok(found, path);
    return found;
  };
  it("shows a committed change as merge-base against branch head", () => {
    assert.deepEqual(diffSides(d, node("src/a.ts"), "/wt"), {
      left: { kind: "rev", rev: MERGE_BASE, path: "src/a.ts" },
      right: { kind: "rev", rev: HEAD, path: "src/a.ts" },
    });
  });
  it("leaves out the absent side of an added or deleted file, and reads a rename from its old path", () => {
    assert.deepEqual(diffSides(d, node("new.txt"), "/wt").left, { kind: "none", path: "new.txt" });
    assert.deepEqual(diffSides(d, node("gone.txt"), "/wt").right, { kind: "none", path: "gone.txt" });
    assert.deepEqual(diffSides(d, node("b.txt"), "/wt").left, { kind: "rev", rev: MERGE_BASE, path: "old/b.txt" });
  });
  it("shows an uncommitted change as branch head against the file in the worktree", () => {
    assert.deepEqual(diffSides(d, node("src/a.ts", true), "/wt"), {
      left: { kind: "rev", rev: HEAD, path: "src/a.ts" },
      right: { kind: "file", path: "/wt/src/a.ts" },
    });
    assert.deepEqual(diffSides(d, node("scratch.txt", true), "/wt").left, { kind: "none", path: "scratch.txt" });
  });
  it("has no base side without a merge-base (unrelated histories)", () => {
    assert.equal(diffSides(diff({ mergeBase: null }), node("src/a.ts"), "/wt").left.kind, "none");
  });
  it("carries the revision in the URI query and refuses anything but a commit id", () => {
    assert.equal(revFromQuery(sideQuery(HEAD)), HEAD);
    assert.equal(revFromQuery(sideQuery(null)), null);
    assert.throws(() => revFromQuery("rev=--output%3D%2Ftmp%2Fx"), /not a commit id/);
    assert.throws(() => revFromQuery("rev=HEAD"), /not a commit id/);
  });
  it("titles the multi-diff editor with the workstream and its base", () => {
    assert.equal(reviewTitle(d, ws("x")), "x: main…aidp/x");
  });
});

describe("gitShow", () => {
  let repo = "";
  let first = "";
  let second = "";
  const git = (...args: string[]): string => execFileSync("git", args, { cwd: repo, encoding: "utf8" }).trim();
  before(() => {
    repo = mkdtempSync(join(tmpdir(), "aidp-review-"));
    git("init", "-q", "-b", "main");
    git("config", "user.email", "t@example.com");
    git("config", "user.name", "t");
    writeFileSync(join(repo, "-odd name; $(x).txt"), "one\n");
    git("add", "-A");
    git("commit", "-q", "-m", "one");
    first = git("rev-parse", "HEAD");
    writeFileSync(join(repo, "-odd name; $(x).txt"), "two\n");
    git("commit", "-q", "-am", "two");
    second = git("rev-parse", "HEAD");
  });
  after(() => rmSync(repo, { recursive: true, force: true }));

  it("reads a file at each commit, whatever its name", async () => {
    assert.equal(await gitShow(repo, first, "-odd name; $(x).txt"), "one\n");
    assert.equal(await gitShow(repo, second, "-odd name; $(x).txt"), "two\n");
  });
  it("rejects with git's message for a path not at that commit", async () => {
    await assert.rejects(gitShow(repo, first, "missing.txt"), /missing\.txt/);
  });
  it("refuses a revision that is not a commit id before running git", async () => {
    await assert.rejects(gitShow(repo, "--output=/tmp/x", "a"), /not a commit id/);
    await assert.rejects(gitShow(repo, "HEAD", "a"), /not a commit id/);
  });
});

describe("landing", () => {
  it("confirms with the target branch and the change summary", () => {
    const { message, detail } = landConfirmation(ws("x", "completed", { changes: changes() }), "squash");
    assert.equal(message, "Land 'x' into main (squash)?");
    assert.match(detail, /^aidp\/x \(\+120 −8 · 5 files\) goes onto main\./);
  });
  it("says what landed where", () => {
    assert.equal(
      landedMessage([{ slug: "x", into: "main", strategy: "merge", commit: "0123456789abcdef", removed: false }]),
      "AIDP: landed x into main (merge) at 0123456.",
    );
    assert.equal(
      landedMessage([{ slug: "x", into: "dev", strategy: "rebase", commit: "89abcdef01234567", removed: true }]),
      "AIDP: landed x into dev (rebase) at 89abcde, worktree and branch removed.",
    );
  });
  it("reads a -32010 refusal: the reason, the files, those landed before it", () => {
    const e = {
      code: ErrorCodes.CannotLand,
      message: "cannot land",
      data: { slug: "y", reason: "it conflicts with main.", files: ["a.txt", "b.txt"], landed: [{ slug: "x", into: "main", strategy: "merge", commit: "0123456789", removed: false }] },
    };
    const data = cannotLandData(e);
    assert.ok(data);
    assert.equal(
      cannotLandMessage(data),
      "AIDP could not land 'y': it conflicts with main. Files: a.txt, b.txt. Nothing of 'y' was changed. Landed before it: x into main (merge) at 0123456.",
    );
  });
  it("tolerates a refusal without data, and ignores other errors", () => {
    const data = cannotLandData({ code: ErrorCodes.CannotLand, message: "the worktree has uncommitted changes" });
    assert.deepEqual(data, { slug: "?", reason: "the worktree has uncommitted changes", files: [], landed: [] });
    assert.equal(cannotLandData({ code: ErrorCodes.InvalidParams, message: "bad" }), undefined);
    assert.equal(cannotLandData(new Error("x")), undefined);
  });
});

describe("conflicts", () => {
  it("lists those conflicting with their base, then the colliding pairs, with the files", () => {
    const items = conflictItems({
      withBase: [
        { slug: "a", baseBranch: "main", clean: true, files: [] },
        { slug: "b", baseBranch: "main", clean: false, files: ["x.txt"] },
      ],
      pairs: [{ a: "a", b: "c", files: ["y.txt", "z.txt"] }],
    });
    assert.deepEqual(items, [
      { label: "b ↔ main", description: "conflicts with its base branch", detail: "x.txt" },
      { label: "a ↔ c", description: "2 files collide", detail: "y.txt, z.txt" },
    ]);
  });
  it("says so when nothing collides", () => {
    assert.equal(
      noConflictsMessage({ withBase: [{ slug: "a", baseBranch: "main", clean: true, files: [] }, { slug: "b", baseBranch: "main", clean: true, files: [] }], pairs: [] }),
      "AIDP: 2 workstreams merge cleanly into their base branches and do not collide with each other.",
    );
    assert.equal(noConflictsMessage({ withBase: [], pairs: [] }), "AIDP: no workstream to check (every one is landed).");
  });
});
