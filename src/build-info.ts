/**
 * What is running: the package version and the Node.js version, for `smtpgate --version` and
 * the smtpgate_build_info metric. The version is read from the package.json one folder above
 * this file (src/ in development, dist/ when installed), so it is always the one of the package
 * the code came from, never a number compiled in.
 */
import { readFileSync } from 'node:fs';

export interface BuildInfo {
  readonly version: string;
  /** process.version, e.g. "v20.20.2". */
  readonly node: string;
}

export function readBuildInfo(packageJson = new URL('../package.json', import.meta.url)): BuildInfo {
  const pkg = JSON.parse(readFileSync(packageJson, 'utf8')) as { version?: unknown };
  if (typeof pkg.version !== 'string') throw new Error(`${packageJson.pathname} has no version`);
  return { version: pkg.version, node: process.version };
}
