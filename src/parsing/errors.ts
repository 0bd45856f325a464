/** Where the config came from, to name the line of a setting in a message. */
export interface ConfigOrigin {
  readonly file: string;
  lineOf(segments: readonly PropertyKey[]): number | undefined;
}

/** A problem found in a config, users or policy file: where it is, and what to do about it. */
export interface ConfigIssue {
  /** The file the problem is in. */
  readonly file: string;
  /** Path inside the file, e.g. "listeners[1].tls"; empty for the whole file. */
  readonly path: string;
  /** 1-based line in the file, when known. */
  readonly line?: number;
  /** What was expected and what was found, and how to fix it. */
  readonly message: string;
}

export class ConfigError extends Error {
  readonly issues: readonly ConfigIssue[];

  constructor(issues: readonly ConfigIssue[]) {
    super(issues.map(formatIssue).join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

export function formatIssue(issue: ConfigIssue): string {
  const where = issue.line ? `${issue.file}:${issue.line}` : issue.file;
  return issue.path ? `${where}: ${issue.path}: ${issue.message}` : `${where}: ${issue.message}`;
}

/** Renders a path such as ['listeners', 1, 'tls'] as "listeners[1].tls". */
export function formatPath(segments: readonly PropertyKey[]): string {
  let out = '';
  for (const s of segments) {
    if (typeof s === 'number') out += `[${s}]`;
    else out += out ? `.${String(s)}` : String(s);
  }
  return out;
}
