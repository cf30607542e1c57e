/** The Workstreams tree view: a thin layer over WorkstreamStore and core/format. */
import * as vscode from "vscode";
import { ariaLabel, contextValue, describe, iconFor, tooltip } from "./core/format";
import type { WorkstreamStore } from "./core/store";

/** Tree elements are slugs. */
export class WorkstreamTreeProvider implements vscode.TreeDataProvider<string>, vscode.Disposable {
  private readonly emitter = new vscode.EventEmitter<string | string[] | undefined>();
  readonly onDidChangeTreeData = this.emitter.event;
  private readonly unsubscribe: () => void;
  private readonly ticker: ReturnType<typeof setInterval>;

  constructor(private readonly store: WorkstreamStore) {
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

  getChildren(element?: string): string[] {
    if (element !== undefined) return [];
    return [...this.store.state.order];
  }

  getParent(): undefined {
    return undefined;
  }

  getTreeItem(slug: string): vscode.TreeItem {
    const view = this.store.state.items.get(slug);
    const item = new vscode.TreeItem(slug, vscode.TreeItemCollapsibleState.None);
    item.id = slug;
    if (view === undefined) return item;
    const now = Date.now();
    const icon = iconFor(view.ws.status);
    item.description = describe(view, now);
    item.iconPath = new vscode.ThemeIcon(icon.id, icon.color ? new vscode.ThemeColor(icon.color) : undefined);
    item.tooltip = tooltip(view, now);
    item.contextValue = contextValue(view);
    item.accessibilityInformation = { label: ariaLabel(view, now) };
    return item;
  }

  dispose(): void {
    clearInterval(this.ticker);
    this.unsubscribe();
    this.emitter.dispose();
  }
}
