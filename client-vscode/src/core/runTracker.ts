/**
 * Follows one run's progress from `aidp/wsStatus` notifications, for the progress notification
 * ("2/5 done"). No `vscode` import.
 *
 * The request's runId is only known when it answers, so a tracker starts with the slugs it expects and
 * adopts the runId of the first `queued`/`running` notification for one of them that no other run owns.
 * It grows with that run: a run of all workstreams, or one that pulls in dependencies, includes others.
 */
import { isFinalStatus, type WsStatusNotification } from "../protocol";

export class RunTracker {
  private readonly expected: Set<string>;
  private readonly done = new Map<string, string>();
  private readonly running = new Set<string>();
  runId: string | null = null;

  /** @param slugs the workstreams the run is expected to include (it may include more) */
  constructor(slugs: Iterable<string>) {
    this.expected = new Set(slugs);
  }

  get total(): number {
    return this.expected.size;
  }

  get doneCount(): number {
    return this.done.size;
  }

  /** Feeds a notification; returns true when it belonged to this run (the message may have changed). */
  accept(n: WsStatusNotification, ownedElsewhere: (runId: string) => boolean = () => false): boolean {
    if (n.runId === null || n.elsewhere === true) return false; // another aidp process's run is never ours
    if (this.runId === null) {
      if (!this.expected.has(n.slug) || (n.status !== "queued" && n.status !== "running")) return false;
      if (ownedElsewhere(n.runId)) return false;
      this.runId = n.runId;
    }
    if (n.runId !== this.runId) return false;
    this.expected.add(n.slug);
    if (n.status === "running") this.running.add(n.slug);
    if (isFinalStatus(n.status)) {
      this.running.delete(n.slug);
      this.done.set(n.slug, n.status);
    }
    return true;
  }

  /** How many of the run's workstreams ended with `status`. */
  count(status: string): number {
    let n = 0;
    for (const s of this.done.values()) if (s === status) n += 1;
    return n;
  }

  /** e.g. "2/5 done, running: slow, build". */
  message(): string {
    const base = `${this.doneCount}/${this.total} done`;
    if (this.running.size === 0) return base;
    const names = [...this.running].slice(0, 3).join(", ");
    const more = this.running.size > 3 ? ` +${this.running.size - 3}` : "";
    return `${base}, running: ${names}${more}`;
  }

  /** Progress increment (percent points) for a `progress.report`, given what was reported before. */
  percent(): number {
    return this.total === 0 ? 100 : Math.round((100 * this.doneCount) / this.total);
  }
}
