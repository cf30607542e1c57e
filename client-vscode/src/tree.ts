/** The Workstreams tree view: a thin layer over WorkstreamStore, core/format and core/review. */
import * as vscode from "vscode";
import { ariaLabel, contextValue, describe, iconFor, tooltip } from "./core/format";
import { hostParts, hostTooltip } from "./core/host";
import { setupFlags, setupLines, setupParts } from "./core/ready";
import { changesSuffix, changesTooltip, fileDescription, fileNodeId, formatChanges, hasChangedFiles, reviewFlags, type FileNode } from "./core/review";
import { scheduleParts, scheduleTooltip } from "./core/schedule";
import type { WorkstreamStore } from "./core/store";
import { workstreamUri, type Review } from "./review";

/** Tree elements: a workstream is its slug; under it, its changed files. */
export type TreeElement = string | FileNode;

export class WorkstreamTreeProvider implements vscode.TreeDataProvider<TreeElement>, vscode.Disposable {
  private readonly emitter = new vscode.EventEmitter<TreeElement | TreeElement[] | undefined>();
  readonly onDidChangeTreeData = this.emitter.event;
  private readonly unsubscribe: () => void;
  private readonly ticker: ReturnType<typeof setInterval>;

  constructor(
    private readonly store: WorkstreamStore,
    private readonly review: Review,
  ) {
    this.unsubscribe = store.onChange((change) => {
      // A status notification refreshes only the item it names.
      this.emitter.fire(change === "all" ? undefined : [...change]);
    });
    // Running items show their elapsed time: refresh just those once a second.
    this.ticker = setInterval(() => {
      const running = store.state.order.filter((s) => store.state.items.get(s)?.ws.status === "running");
      if (running.length > 0) this.emitter.fire(running);
    }, 1000);
  }

  async getChildren(element?: TreeElement): Promise<TreeElement[]> {
    if (element === undefined) return [...this.store.state.order];
    return typeof element === "string" ? this.review.files(element) : [];
  }

  getParent(element: TreeElement): string | undefined {
    return typeof element === "string" ? undefined : element.slug;
  }

  getTreeItem(element: TreeElement): vscode.TreeItem {
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
