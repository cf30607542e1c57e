/** Building request params from settings and choices. No `vscode` import. */
import type { RunOptions, WsRunAllParams, WsRunParams } from "../protocol";

/** The `aidp.*` settings that shape a run, as read from the configuration (values may be anything). */
export interface RunSettings {
  maxConcurrent?: unknown;
  mode?: unknown;
  timeoutS?: unknown;
}

/**
 * Run options from settings. The server rejects unknown or ill-typed fields, so anything out of range
 * is left out (the server then uses `.aidp/config.toml`'s defaults).
 */
export function runOptions(settings: RunSettings): RunOptions {
  const options: RunOptions = {};
  const mc = settings.maxConcurrent;
  if (typeof mc === "number" && Number.isInteger(mc) && mc >= 1 && mc <= 64) {
    options.maxConcurrent = mc;
  }
  const mode = settings.mode;
  if (typeof mode === "string" && mode.trim().length > 0) {
    options.mode = mode.trim();
  }
  const t = settings.timeoutS;
  if (typeof t === "number" && Number.isFinite(t) && t > 0) {
    options.timeoutS = t;
  }
  return options;
}

export function wsRunParams(slugs: readonly string[], settings: RunSettings): WsRunParams {
  if (slugs.length === 0) throw new Error("a run needs at least one workstream");
  return { slugs: [...new Set(slugs)], ...runOptions(settings) };
}

export function wsRunAllParams(settings: RunSettings): WsRunAllParams {
  return runOptions(settings);
}

/**
 * Splits a command line typed by a person into argv: whitespace separates, single and double quotes
 * group, backslash escapes outside single quotes. Throws on an unterminated quote.
 */
export function splitCommandLine(line: string): string[] {
  const out: string[] = [];
  let current = "";
  let inToken = false;
  let quote: "'" | '"' | null = null;
  for (let i = 0; i < line.length; i++) {
    const ch = line.charAt(i);
    if (quote === "'") {
      if (ch === "'") quote = null;
      else current += ch;
    } else if (quote === '"') {
      if (ch === '"') quote = null;
      else if (ch === "\\" && i + 1 < line.length && ['"', "\\", "$", "`"].includes(line.charAt(i + 1))) {
        current += line.charAt(++i);
      } else current += ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      inToken = true;
    } else if (ch === "\\" && i + 1 < line.length) {
      current += line.charAt(++i);
      inToken = true;
    } else if (/\s/.test(ch)) {
      if (inToken) {
        out.push(current);
        current = "";
        inToken = false;
      }
    } else {
      current += ch;
      inToken = true;
    }
  }
  if (quote !== null) throw new Error(`unterminated ${quote} quote`);
  if (inToken) out.push(current);
  return out;
}
