// Checks package.json's contributions against each other: every menu names a declared command, every
// command is in category AIDP, the settings have the documented defaults.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";

interface Manifest {
  engines: { vscode: string };
  capabilities: { untrustedWorkspaces: { supported: boolean; description: string } };
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  contributes: {
    commands: { command: string; category: string; title: string }[];
    menus: Record<string, { command: string; when?: string }[]>;
    configuration: { properties: Record<string, { default: unknown }> };
    viewsWelcome: { view: string; contents: string }[];
  };
}

const manifest = JSON.parse(readFileSync(join(__dirname, "..", "..", "..", "package.json"), "utf8")) as Manifest;

describe("package.json", () => {
  const commands = new Set(manifest.contributes.commands.map((c) => c.command));
  it("declares every command it uses in menus, all in category AIDP", () => {
    for (const [menu, entries] of Object.entries(manifest.contributes.menus)) {
      for (const e of entries) assert.ok(commands.has(e.command), `${menu}: ${e.command}`);
    }
    for (const c of manifest.contributes.commands) assert.equal(c.category, "AIDP", c.command);
    for (const id of [
      "aidp.newWorkstream",
      "aidp.runWorkstreams",
      "aidp.runAll",
      "aidp.cancelWorkstream",
      "aidp.showLog",
      "aidp.openWorktree",
      "aidp.pauseWorkstream",
      "aidp.resumeWorkstream",
      "aidp.removeWorkstream",
      "aidp.restartServer",
      "aidp.reviewChanges",
      "aidp.landWorkstream",
      "aidp.showConflicts",
      "aidp.setPriority",
      "aidp.setDependencies",
      "aidp.redoSetup",
    ]) {
      assert.ok(commands.has(id), id);
    }
  });
  it("has the settings with their defaults", () => {
    const p = manifest.contributes.configuration.properties;
    assert.equal(p["aidp.maxConcurrent"]?.default, 3);
    assert.equal(p["aidp.mode"]?.default, "execute");
    assert.equal(p["aidp.timeoutS"]?.default, null);
    assert.deepEqual(p["aidp.server.command"]?.default, []);
    assert.equal(p["aidp.notifyOnFailure"]?.default, false);
  });
  it("refuses untrusted workspaces and pins exact versions", () => {
    assert.equal(manifest.capabilities.untrustedWorkspaces.supported, false);
    assert.ok(manifest.capabilities.untrustedWorkspaces.description.length > 0);
    for (const [name, version] of Object.entries({ ...manifest.dependencies, ...manifest.devDependencies })) {
      assert.match(version, /^\d+\.\d+\.\d+$/, `${name} must be pinned`);
    }
    assert.equal(manifest.devDependencies["@types/vscode"], manifest.engines.vscode.replace(/^\^/, ""));
  });
  it("has a welcome view with a New Workstream button", () => {
    assert.ok(manifest.contributes.viewsWelcome.some((w) => w.contents.includes("(command:aidp.newWorkstream)")));
  });
});
