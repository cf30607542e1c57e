import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  appendTail,
  diagnoseStartFailure,
  formatCommandLine,
  resolveServerCommand,
  type ServerCommand,
} from "../../src/core/serverCommand";

const none = (): boolean => false;

describe("resolveServerCommand", () => {
  it("uses the setting when it is a non-empty argv", () => {
    assert.deepEqual(
      resolveServerCommand({ setting: ["/opt/py", "-m", "aidp", "serve"], folder: "/repo", platform: "linux", exists: () => true }),
      { command: "/opt/py", args: ["-m", "aidp", "serve"], source: "setting" },
    );
  });
  it("falls back to the workspace's .venv python", () => {
    const seen: string[] = [];
    const cmd = resolveServerCommand({
      setting: [],
      folder: "/repo",
      platform: "linux",
      exists: (f) => {
        seen.push(f);
        return f === "/repo/.venv/bin/python";
      },
    });
    assert.deepEqual(cmd, { command: "/repo/.venv/bin/python", args: ["-m", "aidp", "serve"], source: "workspace-venv" });
    assert.deepEqual(seen, ["/repo/.venv/bin/python"]);
  });
  it("uses Scripts\\python.exe on Windows", () => {
    const cmd = resolveServerCommand({ setting: [], folder: "C:\\repo", platform: "win32", exists: () => true });
    assert.equal(cmd.command, "C:\\repo\\.venv\\Scripts\\python.exe");
  });
  it("falls back to python3, and ignores settings that are not an argv", () => {
    for (const setting of [[], undefined, null, "python", [1, 2], [""]]) {
      assert.deepEqual(resolveServerCommand({ setting, folder: "/repo", platform: "linux", exists: none }), {
        command: "python3",
        args: ["-m", "aidp", "serve"],
        source: "python3",
      });
    }
    assert.equal(resolveServerCommand({ setting: [], folder: undefined, platform: "win32", exists: none }).command, "python");
  });
});

describe("diagnoseStartFailure", () => {
  const auto: ServerCommand = { command: "python3", args: ["-m", "aidp", "serve"], source: "python3" };
  const fromSetting: ServerCommand = { command: "/bad/python", args: ["-m", "aidp", "serve"], source: "setting" };
  it("says the interpreter is missing", () => {
    const m = diagnoseStartFailure({ command: fromSetting, spawnErrorCode: "ENOENT" });
    assert.match(m, /'\/bad\/python' was not found/);
    assert.match(m, /Fix the "aidp.server.command" setting/);
    assert.match(m, /AIDP: Restart Server/);
  });
  it("says aidp is not installed", () => {
    const m = diagnoseStartFailure({
      command: auto,
      exitCode: 1,
      stderr: "/usr/bin/python3: No module named aidp\n",
    });
    assert.match(m, /aidp is not installed for python3/);
    assert.match(m, /\.venv/);
    assert.match(m, /aidp\.server\.command/);
    const quoted = diagnoseStartFailure({ command: auto, exitCode: 1, stderr: "python3: No module named 'aidp'\n" });
    assert.match(quoted, /aidp is not installed/);
    const other = diagnoseStartFailure({ command: auto, exitCode: 1, stderr: "No module named aidpx\n" });
    assert.doesNotMatch(other, /aidp is not installed/);
  });
  it("quotes the last stderr lines otherwise", () => {
    const m = diagnoseStartFailure({ command: auto, exitCode: 2, stderr: "a\nb\nc\nd\nTypeError: boom\n" });
    assert.match(m, /b \/ d \/ TypeError: boom|c \/ d \/ TypeError: boom/);
    assert.match(diagnoseStartFailure({ command: auto, exitCode: 2 }), /exit code 2/);
  });
  it("formats command lines and keeps a bounded stderr tail", () => {
    assert.equal(formatCommandLine({ command: "/a b/py", args: ["-m", "aidp"] }), '"/a b/py" -m aidp');
    assert.equal(appendTail("abc", "def", 4), "cdef");
  });
});
