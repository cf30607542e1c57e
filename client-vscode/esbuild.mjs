// Bundles the extension (dist/extension.js) and, with --tests / --e2e, the test programs (out/test/).
// Usage: node esbuild.mjs [--production] [--tests] [--e2e] [--watch]
import * as esbuild from "esbuild";
import { readdirSync } from "node:fs";
import { join } from "node:path";

const production = process.argv.includes("--production");
const tests = process.argv.includes("--tests");
const e2e = process.argv.includes("--e2e");
const watch = process.argv.includes("--watch");

const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  logLevel: "warning",
};

/** @type {import("esbuild").BuildOptions[]} */
const builds = [];

if (!tests && !e2e) {
  builds.push({
    ...common,
    entryPoints: ["src/extension.ts"],
    outfile: "dist/extension.js",
    external: ["vscode"],
    minify: production,
    sourcemap: !production,
    sourcesContent: false,
  });
}

if (tests) {
  const dir = "test/unit";
  builds.push({
    ...common,
    entryPoints: readdirSync(dir)
      .filter((f) => f.endsWith(".test.ts"))
      .map((f) => join(dir, f)),
    outdir: "out/test/unit",
    // No `external: ["vscode"]`: a unit-tested module that imports vscode fails to bundle.
    packages: "external",
    sourcemap: "inline",
  });
}

if (e2e) {
  builds.push({
    ...common,
    entryPoints: ["test/e2e/e2e.ts"],
    outfile: "out/test/e2e/e2e.js",
    packages: "external",
    sourcemap: "inline",
  });
}

if (watch) {
  for (const options of builds) {
    const ctx = await esbuild.context(options);
    await ctx.watch();
  }
} else {
  await Promise.all(builds.map((options) => esbuild.build(options)));
}
