/**
 * The app passwords the W5-app workload signs in with: one per bench user, in a credentials
 * file (`auth.credentials`) written once per bench run, like the users files.
 *
 * They are made with smtpgate's own functions (src/auth/credentials-file.ts: generateSecret,
 * hashSecret, formatCredentialLine), taken from the build in dist/ that `npm run bench` makes
 * first, so the file is exactly what smtpgate writes and reads. The harness is compiled apart
 * from src/ (bench/tsconfig.json's rootDir), hence the import at run time and the small
 * interface below instead of src's types.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { REPO_ROOT } from '../peers/smtpgate.js';

/** The part of dist/auth/credentials-file.js the bench uses. */
interface CredentialsFileFunctions {
  generateSecret(): string;
  hashSecret(secret: string): string;
  formatCredentialLine(c: { user: string; label: string; hash: string; created?: Date }): string;
}

const CREDENTIALS_MODULE = path.join(REPO_ROOT, 'dist', 'auth', 'credentials-file.js');

/** The label of every bench credential: the device it stands for. */
const LABEL = 'bench-load';

export interface BenchAppPasswords {
  /** The credentials file, for `auth.credentials`. */
  readonly file: string;
  /** The same users, in the same order, each with their app password as `password`. */
  readonly users: readonly { readonly name: string; readonly password: string }[];
}

/** Makes one app password per user and writes them to `file`; returns the secrets. */
export async function writeBenchAppPasswords(users: readonly { readonly name: string }[], file: string): Promise<BenchAppPasswords> {
  const fns = await credentialsFileFunctions();
  const created = new Date();
  const withSecrets = users.map((u) => ({ name: u.name, password: fns.generateSecret() }));
  const lines = withSecrets.map((u) => fns.formatCredentialLine({ user: u.name, label: LABEL, hash: fns.hashSecret(u.password), created }));
  // Hashes only, but an operator would keep the file private too.
  await writeFile(file, `# W5-app: one app password per bench user\n${lines.join('\n')}\n`, { mode: 0o600 });
  return { file, users: withSecrets };
}

async function credentialsFileFunctions(): Promise<CredentialsFileFunctions> {
  const mod = (await import(pathToFileURL(CREDENTIALS_MODULE).href)) as Partial<CredentialsFileFunctions>;
  const missing = (['generateSecret', 'hashSecret', 'formatCredentialLine'] as const).filter((name) => typeof mod[name] !== 'function');
  if (missing.length) throw new Error(`${CREDENTIALS_MODULE} has no ${missing.join(', ')}: rebuild smtpgate (npm run build)`);
  return mod as CredentialsFileFunctions;
}
