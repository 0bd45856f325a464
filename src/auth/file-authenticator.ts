/**
 * `auth.backend: file`: verifies against the htpasswd users file.
 *
 * bcrypt runs in libuv's thread pool (@node-rs/bcrypt), never on the event loop, so one AUTH
 * does not stall other sessions. An unknown user is checked against a dummy hash of the same
 * cost so that unknown users and wrong passwords take the same time.
 */
import { readFile } from 'node:fs/promises';
import { hash as bcryptHash, verify } from '@node-rs/bcrypt';
import { ConfigError } from '../parsing/errors.js';
import type { AuthOutcome, AuthRequest, Authenticator, LookupRequest } from './authenticator.js';
import { parseUsersFile, type UserRecord } from './users-file.js';


export async function readUsersFile(file: string): Promise<Map<string, UserRecord>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError([{ file, path: 'auth.users', message: `cannot read the users file: ${(err as Error).message}` }]);
  }
  const parsed = parseUsersFile(text, file);
  if (!parsed.ok) throw new ConfigError(parsed.issues);
  return parsed.users;
}

export class FileAuthenticator implements Authenticator {
  readonly kind = 'file';
  #users: Map<string, UserRecord>;
  /** A hash of the file's usual cost that no password matches, for unknown users. */
  #dummyHash: Promise<string>;

  constructor(users: Map<string, UserRecord>) {
    this.#users = users;
    this.#dummyHash = dummyHashFor(users);
  }

  /** Swap in a freshly parsed users file (reload). */
  replaceUsers(users: Map<string, UserRecord>): void {
    this.#users = users;
    this.#dummyHash = dummyHashFor(users);
  }

  get size(): number {
    return this.#users.size;
  }

  async authenticate(req: AuthRequest): Promise<AuthOutcome> {
    const record = this.#users.get(req.username);
    const hash = record?.hash ?? (await this.#dummyHash);
    const match = await verify(req.password, hash).catch(() => false);
    if (!record) return { ok: false, reason: 'unknown_user' };
    return match ? { ok: true, user: { username: record.username } } : { ok: false, reason: 'bad_credentials' };
  }

  /** A user listed in the file exists and may sign in: the file has no disabled accounts. */
  async lookup(req: LookupRequest): Promise<AuthOutcome> {
    const record = this.#users.get(req.username);
    return record ? { ok: true, user: { username: record.username } } : { ok: false, reason: 'unknown_user' };
  }
}

function dummyHashFor(users: Map<string, UserRecord>): Promise<string> {
  const costs = [...users.values()].map((u) => Number(u.hash.slice(4, 6))).sort((a, b) => a - b);
  const cost = costs[Math.floor(costs.length / 2)] ?? 10;
  return bcryptHash(`smtpgate-unknown-user-${Math.random()}`, cost);
}
