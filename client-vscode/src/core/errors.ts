/** Turning JSON-RPC errors from the server into messages. No `vscode` import. */
import { ErrorCodes } from "../protocol";

export interface RpcErrorLike {
  code: number;
  message: string;
  data?: unknown;
}

export function isRpcError(e: unknown): e is RpcErrorLike {
  return (
    typeof e === "object" &&
    e !== null &&
    typeof (e as { code?: unknown }).code === "number" &&
    typeof (e as { message?: unknown }).message === "string"
  );
}

function stringList(data: unknown, key: string): string[] {
  if (typeof data !== "object" || data === null) return [];
  const value = (data as Record<string, unknown>)[key];
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === "string") : [];
}

export function isCancelled(e: unknown): boolean {
  if (isRpcError(e) && e.code === ErrorCodes.RequestCancelled) return true;
  return typeof e === "object" && e !== null && (e as { name?: unknown }).name === "Canceled";
}

/** A one-line message for an error answered to `action` (e.g. "run", "remove 'x'"). */
export function describeError(action: string, e: unknown): string {
  if (isRpcError(e)) {
    switch (e.code) {
      case ErrorCodes.ServerBusy: {
        const running = stringList(e.data, "running");
        return running.length > 0
          ? `AIDP: cannot ${action}: already queued or running: ${running.join(", ")}.`
          : `AIDP: cannot ${action}: ${e.message}`;
      }
      case ErrorCodes.InvalidParams: {
        const unknown = stringList(e.data, "unknown");
        return unknown.length > 0
          ? `AIDP: cannot ${action}: unknown workstream${unknown.length === 1 ? "" : "s"}: ${unknown.join(", ")}.`
          : `AIDP: cannot ${action}: ${e.message}`;
      }
      case ErrorCodes.RequestCancelled:
        return `AIDP: ${action} was cancelled.`;
      default:
        return `AIDP: cannot ${action}: ${e.message}`;
    }
  }
  if (e instanceof Error) return `AIDP: cannot ${action}: ${e.message}`;
  return `AIDP: cannot ${action}: ${String(e)}`;
}

/** True when a remove was refused to protect uncommitted work (the server answers -32602 then). */
export function isDirtyRefusal(e: unknown): boolean {
  return (
    isRpcError(e) &&
    e.code === ErrorCodes.InvalidParams &&
    stringList(e.data, "unknown").length === 0 &&
    /refus|uncommitted|dirty|untracked|not merged|unmerged|lose|force/i.test(e.message)
  );
}
