import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { runOptions, splitCommandLine, wsRunAllParams, wsRunParams } from "../../src/core/args";

describe("run params", () => {
  it("builds wsRun params from the settings", () => {
    assert.deepEqual(wsRunParams(["a", "b", "a"], { maxConcurrent: 3, mode: "execute", timeoutS: null }), {
      slugs: ["a", "b"],
      maxConcurrent: 3,
      mode: "execute",
    });
    assert.deepEqual(wsRunParams(["a"], { maxConcurrent: 2, mode: "plan", timeoutS: 30 }), {
      slugs: ["a"],
      maxConcurrent: 2,
      mode: "plan",
      timeoutS: 30,
    });
  });
  it("leaves out what the server would reject (it forbids bad and unknown fields)", () => {
    assert.deepEqual(runOptions({ maxConcurrent: 0, mode: "", timeoutS: -1 }), {});
    assert.deepEqual(runOptions({ maxConcurrent: 65, mode: 3, timeoutS: "10" }), {});
    assert.deepEqual(runOptions({ maxConcurrent: 2.5 }), {});
    assert.deepEqual(runOptions({}), {});
    assert.deepEqual(Object.keys(wsRunAllParams({ maxConcurrent: 64, mode: " execute ", timeoutS: 0.5 })).sort(), [
      "maxConcurrent",
      "mode",
      "timeoutS",
    ]);
    assert.equal(wsRunAllParams({ mode: " execute " }).mode, "execute");
    // JSON has no undefined fields.
    assert.equal(JSON.stringify(wsRunAllParams({ timeoutS: null })), "{}");
  });
  it("refuses an empty run", () => {
    assert.throws(() => wsRunParams([], {}), /at least one/);
  });
});

describe("splitCommandLine", () => {
  it("splits like a shell", () => {
    assert.deepEqual(splitCommandLine("python -m aidp serve"), ["python", "-m", "aidp", "serve"]);
    assert.deepEqual(splitCommandLine(`sh -c 'echo "hi there"; exit 3'`), ["sh", "-c", 'echo "hi there"; exit 3']);
    assert.deepEqual(splitCommandLine(`a "b c" d\\ e ""`), ["a", "b c", "d e", ""]);
    assert.deepEqual(splitCommandLine("   "), []);
    assert.throws(() => splitCommandLine("'open"), /unterminated/);
  });
});
