/** The Workstreams tree view: a thin layer over WorkstreamStore, core/format and core/review. */
import * as vscode from "vscode";
import { ariaLabel, contextValue, describe, iconFor, tooltip } from "./core/format";
import { groupLabel, groupMembers, isGroup, parentOf, refreshTargets, rootNodes, statusCounts, type StatusGroup } from "./core/groups";
import { hostParts, hostTooltip } from "./core/host";
import { setupFlags, setupLines, setupParts } from "./core/ready";
import { changesSuffix, changesTooltip, fileDescription, fileNodeId, formatChanges, hasChangedFiles, reviewFlags, type FileNode } from "./core/review";
import { scheduleParts, scheduleTooltip } from "./core/schedule";
import type { State } from "./core/state";
import type { WorkstreamStore } from "./core/store";
import { workstreamUri, type Review } from "./review";

/** Tree elements: a workstream is its slug; under it, its changed files; at scale, status groups above. */
export type TreeElement = string | FileNode | StatusGroup;

export class WorkstreamTreeProvider implements vscode.TreeDataProvider<TreeElement>, vscode.Disposable {
  private readonly emitter = new vscode.EventEmitter<TreeElement | TreeElement[] | undefined>();
  readonly onDidChangeTreeData = this.emitter.event;
  private readonly unsubscribe: () => void;
  private readonly ticker: ReturnType<typeof setInterval>;
  /** The state the tree last showed: what a change is compared with. */
  private shown: State;

  constructor(
    private readonly store: WorkstreamStore,
    private readonly review: Review,
  ) {
    this.shown = store.state;
    this.unsubscribe = store.onChange((change) => {
      // A status notification refreshes only the item it names, or the groups it moved between.
      const targets = refreshTargets(this.shown, store.state, change);
      this.shown = store.state;
      this.emitter.fire(targets === "all" ? undefined : targets);
    });
    // Running items show their elapsed time: refresh just those once a second.
    this.ticker = setInterval(() => {
      const running = store.state.order.filter((s) => store.state.items.get(s)?.ws.status === "running");
      if (running.length > 0) this.emitter.fire(running);
    }, 1000);
  }

  async getChildren(element?: TreeElement): Promise<TreeElement[]> {
    if (element === undefined) return rootNodes(this.store.state);
    if (isGroup(element)) return groupMembers(this.store.state, element);
    return typeof element === "string" ? this.review.files(element) : [];
  }

  getParent(element: TreeElement): string | StatusGroup | undefined {
    if (isGroup(element)) return undefined;
    return typeof element === "string" ? parentOf(this.store.state, element) : element.slug;
  }

  getTreeItem(element: TreeElement): vscode.TreeItem {
    if (isGroup(element)) {
      const count = statusCounts(this.store.state).get(element.status) ?? 0;
      const item = new vscode.TreeItem(groupLabel(element, count), vscode.TreeItemCollapsibleState.Collapsed);
      item.id = `group:${element.status}`;
      const icon = iconFor(element.status);
      item.iconPath = new vscode.ThemeIcon(icon.id, icon.color ? new vscode.ThemeColor(icon.color) : undefined);
      return item;
    }
    if (typeof element !== "string") {
      const item = this.review.fileItem(element, fileDescription(element));
      item.id = fileNodeId(element);
      return item;
    }
    const slug = element;
    const view = this.store.state.items.get(slug);
    const item = new vscode.TreeItem(slug, vscode.TreeItemCollapsibleState.None);
    item.id = slug;
    if (view === undefined) return item;
    const now = Date.now();
    const icon = iconFor(view.ws.status);
    const changes = formatChanges(view.ws.changes);
    const schedule = scheduleParts(view.ws);
    if (hasChangedFiles(view.ws)) item.collapsibleState = vscode.TreeItemCollapsibleState.Collapsed;
    // The badge (conflict or uncommitted changes) comes from Review's decoration of this URI.
    item.resourceUri = workstreamUri(slug);
    const host = hostParts(view.ws);
    item.description = [describe(view, now), ...host, ...setupParts(view.ws), ...schedule, ...(changes ? [changes] : [])].join(" · ");
    item.iconPath = new vscode.ThemeIcon(icon.id, icon.color ? new vscode.ThemeColor(icon.color) : undefined);
    item.tooltip = [
      tooltip(view, now),
      hostTooltip(view.ws).join("\n"),
      setupLines(view.ws).join("\n"),
      scheduleTooltip(view.ws).join("\n"),
      changesTooltip(view.ws).join("\n"),
    ]
      .filter((part) => part.length > 0)
      .join("\n\n");
    item.contextValue = [contextValue(view), ...reviewFlags(view.ws), ...setupFlags(view.ws)].join(" ");
    item.accessibilityInformation = { label: [ariaLabel(view, now), ...host, ...schedule, ...changesSuffix(view.ws)].join(", ") };
    return item;
  }

  dispose(): void {
    clearInterval(this.ticker);
    this.unsubscribe();
    this.emitter.dispose();
  }
}
