/** Holds the current State and tells listeners which items changed. No `vscode` import. */
import type { RunSummary, Workstream, WsStatusNotification } from "../protocol";
import { countStates, EMPTY_STATE, reduceList, reduceRecords, reduceStatus, reduceSummary, type Counts, type Reduction, type State } from "./state";

/** "all": the list itself changed; otherwise the slugs whose items changed. */
export type Change = "all" | readonly string[];

export class WorkstreamStore {
  private _state: State = EMPTY_STATE;
  private readonly listeners = new Set<(change: Change) => void>();
  /** True once a list has been loaded from the server. */
  loaded = false;

  get state(): State {
    return this._state;
  }

  counts(): Counts {
    return countStates(this._state);
  }

  onChange(listener: (change: Change) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(change: Change): void {
    if (change !== "all" && change.length === 0) return;
    for (const listener of this.listeners) listener(change);
  }

  setList(list: readonly Workstream[], now = Date.now()): void {
    this._state = reduceList(this._state, list, now);
    this.loaded = true;
    this.emit("all");
  }

  clear(): void {
    this._state = EMPTY_STATE;
    this.loaded = false;
    this.emit("all");
  }

  /** Applies a status notification; returns false when the slug is unknown (re-fetch the list then). */
  applyStatus(n: WsStatusNotification, now = Date.now()): boolean {
    return this.apply(reduceStatus(this._state, n, now));
  }

  /** Applies records (`aidp/wsUpdated`); returns false when one is of an unknown slug (re-fetch the list then). */
  applyRecords(workstreams: readonly Workstream[], now = Date.now()): boolean {
    return this.apply(reduceRecords(this._state, workstreams, now));
  }

  applySummary(summary: RunSummary): boolean {
    return this.apply(reduceSummary(this._state, summary));
  }

  private apply(r: Reduction): boolean {
    this._state = r.state;
    this.emit(r.changed);
    return !r.unknown;
  }

  get(slug: string): Workstream | undefined {
    return this._state.items.get(slug)?.ws;
  }

  /** The slugs currently queued or running. */
  live(): string[] {
    return this._state.order.filter((slug) => {
      const status = this._state.items.get(slug)?.ws.status;
      return status === "running" || status === "queued";
    });
  }
}
