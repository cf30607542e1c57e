/** Which command starts `aidp serve`, and what to tell a person when it does not start. No `vscode` import. */
import * as path from "node:path";

export interface ServerCommand {
  command: string;
  args: string[];
  /** Where the command came from, for messages. */
  source: "setting" | "workspace-venv" | "python3";
}

export interface ResolveInput {
  /** The `aidp.server.command` setting (argv); empty or not an array of strings means "auto". */
  setting: unknown;
  /** The first workspace folder's path, if any. */
  folder: string | undefined;
  platform: NodeJS.Platform;
  exists: (file: string) => boolean;
}

export const SERVE_ARGS: readonly string[] = ["-m", "aidp", "serve"];

export function venvPython(folder: string, platform: NodeJS.Platform): string {
  return platform === "win32"
    ? path.win32.join(folder, ".venv", "Scripts", "python.exe")
    : path.posix.join(folder, ".venv", "bin", "python");
}

export function isArgv(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === "string");
}

/**
 * The setting when set (non-empty argv), else the workspace's `.venv` interpreter when it exists,
 * else `python3` (`python` on Windows), each with `-m aidp serve`.
 */
export function resolveServerCommand(input: ResolveInput): ServerCommand {
  const { setting, folder, platform, exists } = input;
  if (isArgv(setting) && setting.length > 0 && setting[0]?.trim()) {
    const [command, ...args] = setting;
    return { command: command ?? "", args, source: "setting" };
  }
  if (folder !== undefined) {
    const python = venvPython(folder, platform);
    if (exists(python)) {
      return { command: python, args: [...SERVE_ARGS], source: "workspace-venv" };
    }
  }
  return { command: platform === "win32" ? "python" : "python3", args: [...SERVE_ARGS], source: "python3" };
}

/** A command line for messages, quoting arguments that need it. */
export function formatCommandLine(cmd: Pick<ServerCommand, "command" | "args">): string {
  return [cmd.command, ...cmd.args].map((a) => (a === "" || /[\s"'\\$`]/.test(a) ? JSON.stringify(a) : a)).join(" ");
}

export interface StartFailure {
  command: ServerCommand;
  /** The spawn error code, e.g. ENOENT or EACCES, when the process did not start at all. */
  spawnErrorCode?: string;
  /** The process exit code when it exited during start-up. */
  exitCode?: number | null;
  /** The last lines the server wrote to stderr. */
  stderr?: string;
  /** Any other error message (e.g. from the initialize handshake). */
  message?: string;
}

/** A message that says what went wrong and exactly what to do about it. */
export function diagnoseStartFailure(f: StartFailure): string {
  const line = formatCommandLine(f.command);
  const fix =
    f.command.source === "setting"
      ? 'Fix the "aidp.server.command" setting'
      : 'Install aidp into the workspace\'s .venv (e.g. `python3 -m venv .venv && .venv/bin/pip install aidp`), or set "aidp.server.command" to the argv of an interpreter that has it, e.g. ["/path/to/.venv/bin/python", "-m", "aidp", "serve"]';
  const stderr = f.stderr ?? "";
  if (f.spawnErrorCode === "ENOENT") {
    return `AIDP: cannot start the server: '${f.command.command}' was not found (command: ${line}). ${fix}, then run "AIDP: Restart Server".`;
  }
  if (f.spawnErrorCode === "EACCES") {
    return `AIDP: cannot start the server: '${f.command.command}' is not executable (command: ${line}). ${fix}, then run "AIDP: Restart Server".`;
  }
  if (/No module named '?aidp(\.\w+)*'?\s*$/m.test(stderr)) {
    return `AIDP: aidp is not installed for ${f.command.command} (command: ${line}). ${fix}, then run "AIDP: Restart Server".`;
  }
  const detail = lastLines(stderr, 3) || f.message || (f.exitCode != null ? `exit code ${f.exitCode}` : "unknown error");
  return `AIDP: the server did not start (command: ${line}): ${detail}. ${fix}, then run "AIDP: Restart Server".`;
}

export function lastLines(text: string, n: number): string {
  return text
    .split(/\r?\n/)
    .map((l) => l.trimEnd())
    .filter((l) => l.length > 0)
    .slice(-n)
    .join(" / ");
}

/** Keeps the last `max` characters of a growing text (server stderr). */
export function appendTail(tail: string, chunk: string, max = 8192): string {
  const joined = tail + chunk;
  return joined.length > max ? joined.slice(joined.length - max) : joined;
}
