/**
 * How long the tree takes, at 10,000 workstreams, from an `aidp/wsStatus` notification to its data
 * provider having the change: the store applies it (`reduceStatus`), the tree works out what to
 * refresh (`refreshTargets`: the item, or the two groups it moved between), which VS Code then
 * asks for again. And a whole list: how many nodes the root holds for VS Code to render.
 * Run: `npm run --silent bench:tree` (prints wall and CPU medians and p99 in microseconds: on a loaded
 * machine the wall time is mostly waiting for a core).
 */
import { performance } from "node:perf_hooks";
import { refreshTargets, rootNodes } from "../../src/core/groups";
import { WorkstreamStore } from "../../src/core/store";
import type { Status } from "../../src/protocol";
import { ws } from "../unit/fixtures";

const N = 10_000;
const ROUNDS = 2_000;

function percentile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.round((q / 100) * (sorted.length - 1)))] ?? NaN;
}

function measure(what: string, refresh: (store: WorkstreamStore, slug: string, status: Status) => number): void {
  const store = new WorkstreamStore();
  store.setList(Array.from({ length: N }, (_, i) => ws(`ws-${i}`, i < 100 ? "running" : i < 200 ? "queued" : "active")));
  const times: number[] = [];
  const cpus: number[] = [];
  let nodes = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const slug = `ws-${200 + (round % (N - 200))}`;
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    nodes += refresh(store, slug, round % 2 === 0 ? "queued" : "active");
    const cpu = process.cpuUsage(cpu0);
    times.push((performance.now() - t0) * 1000);
    cpus.push(cpu.user + cpu.system);
  }
  const median = percentile(times, 50).toFixed(0);
  const cpu = `CPU median ${percentile(cpus, 50).toFixed(0)} µs, p99 ${percentile(cpus, 99).toFixed(0)} µs`;
  console.log(`${what}: median ${median} µs, p99 ${percentile(times, 99).toFixed(0)} µs; ${cpu} (${nodes / ROUNDS} nodes a change)`);
}

const notification = (slug: string, status: Status) => ({ runId: "r1", slug, status, exitCode: null, durationS: null, error: null });

// Statuses alternate between queued and active (100 stay queued, so both groups always exist).
measure("a status change: applied, and the two groups to refresh worked out", (store, slug, status) => {
  const before = store.state;
  store.applyStatus(notification(slug, status));
  const targets = refreshTargets(before, store.state, [slug]);
  return targets === "all" ? N : targets.length;
});

measure("a running one's progress: applied, and the item to refresh worked out", (store, slug) => {
  const running = `ws-${Number(slug.slice(3)) % 100}`;
  const before = store.state;
  store.applyStatus({ ...notification(running, "running"), progress: { percent: 50, step: null, message: null } });
  const targets = refreshTargets(before, store.state, [running]);
  return targets === "all" ? N : targets.length;
});

const store = new WorkstreamStore();
const t0 = performance.now();
store.setList(Array.from({ length: N }, (_, i) => ws(`ws-${i}`, i < 100 ? "running" : "active")));
const root = rootNodes(store.state);
console.log(`a whole list (aidp/wsList answered): ${((performance.now() - t0) * 1000).toFixed(0)} µs; the root holds ${root.length} nodes (flat: ${N})`);
