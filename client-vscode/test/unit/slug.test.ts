import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SLUG_PATTERN, suggestSlug, validateSlug } from "../../src/core/slug";

describe("validateSlug", () => {
  it("accepts the engine's slugs", () => {
    for (const s of ["a", "fix-login", "a1-b2-c3", "0", "x".repeat(64)]) {
      assert.equal(validateSlug(s), undefined, s);
      assert.match(s, SLUG_PATTERN);
    }
  });
  it("rejects everything else with a reason", () => {
    const cases: [string, RegExp][] = [
      ["", /Enter a slug/],
      ["Fix", /lowercase/],
      ["fix_it", /Only lowercase letters, digits and hyphens/],
      ["fix it", /Only lowercase/],
      ["-fix", /start or end/],
      ["fix-", /start or end/],
      ["fix--it", /single hyphens/],
      ["x".repeat(65), /At most 64/],
      ["é", /Only lowercase/],
    ];
    for (const [s, why] of cases) {
      const message = validateSlug(s);
      assert.ok(message !== undefined, `should reject ${JSON.stringify(s)}`);
      assert.match(message, why);
      assert.equal(s.length <= 64 && SLUG_PATTERN.test(s), false);
    }
  });
  it("rejects a slug that already exists", () => {
    assert.match(validateSlug("a", ["b", "a"]) ?? "", /already exists/);
  });
  it("agrees with the pattern on many strings", () => {
    const alphabet = ["a", "z", "0", "9", "-", "A", "_", " "];
    for (let i = 0; i < 2000; i++) {
      let s = "";
      let n = i;
      do {
        s += alphabet[n % alphabet.length] ?? "";
        n = Math.floor(n / alphabet.length);
      } while (n > 0);
      assert.equal(validateSlug(s) === undefined, SLUG_PATTERN.test(s), s);
    }
  });
});

describe("suggestSlug", () => {
  it("turns text into a valid slug", () => {
    assert.equal(suggestSlug("Fix the Login bug!"), "fix-the-login-bug");
    assert.equal(validateSlug(suggestSlug(`${"word ".repeat(30)}end`)), undefined);
  });
});
