/** The text of `aidp/doctor`'s findings, as `aidp doctor` prints them in a terminal. */

import type { DoctorReport } from "../protocol";

const MARKS = { ok: "ok", warning: "warning", problem: "PROBLEM" } as const;

/** One line per finding, its fix (what to do) indented below it, then the counts. */
export function doctorLines(report: DoctorReport): string[] {
  const lines: string[] = [];
  for (const f of report.findings) {
    lines.push(`${MARKS[f.level].padStart(7)}  ${f.check}: ${f.message}`);
    if (f.fix) lines.push(`${"".padStart(7)}  -> ${f.fix}`);
  }
  lines.push(doctorSummary(report));
  return lines;
}

/** "1 problem, 2 warnings". */
export function doctorSummary(report: DoctorReport): string {
  const count = (level: string, word: string): string => {
    const n = report.findings.filter((f) => f.level === level).length;
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  };
  return `${count("problem", "problem")}, ${count("warning", "warning")}`;
}
