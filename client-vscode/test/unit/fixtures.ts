import type { Status, Workstream, WorkstreamResult, WsStatusNotification } from "../../src/protocol";

export function ws(slug: string, status: Status = "active", extra: Partial<Workstream> = {}): Workstream {
  return {
    slug,
    task: `task of ${slug}`,
    status,
    branch: `aidp/${slug}`,
    path: `/repo/.worktrees/${slug}`,
    baseBranch: null,
    command: null,
    createdAt: "2026-11-25T19:00:00.000Z",
    updatedAt: "2026-11-25T19:00:00.000Z",
    lastResult: null,
    ...extra,
  };
}

export function result(slug: string, status: WorkstreamResult["status"], extra: Partial<WorkstreamResult> = {}): WorkstreamResult {
  return {
    slug,
    status,
    exitCode: status === "completed" ? 0 : 1,
    startedAt: "2026-11-25T19:00:00.000Z",
    finishedAt: "2026-11-25T19:00:01.000Z",
    durationS: 1,
    error: null,
    logPath: `/repo/.aidp/logs/${slug}/r1.log`,
    sandbox: null,
    ...extra,
  };
}

export function status(
  slug: string,
  s: Status,
  runId: string | null = "r1",
  extra: Partial<WsStatusNotification> = {},
): WsStatusNotification {
  return { runId, slug, status: s, exitCode: null, durationS: null, error: null, ...extra };
}
