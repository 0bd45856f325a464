/**
 * `smtpgate user add|passwd|del NAME`: edits the users file in place.
 *
 * The edit itself is pure (`../auth/users-file-edit.ts`); this file reads the password (a
 * hidden prompt on a terminal, the first line of stdin otherwise) and hashes it. Finding the
 * file (`--file`, or `auth.users` of `--config`), reading it and replacing it atomically with
 * its mode and owner kept is `edited-file.ts`, shared with `smtpgate credential`.
 */
import type { ReadStream } from 'node:tty';
import { hash as bcryptHash } from '@node-rs/bcrypt';
import type { Command } from 'commander';
import { applyUsersFileEdit, checkUsersFileEdit, type UsersFileEdit } from '../auth/users-file-edit.js';
import { CommandRefusal, refusalsToExitCode } from './command-refusal.js';
import { chooseFile, editFile, followSymlinks, readFileText, type FileInConfig, type FileOptions } from './edited-file.js';

const DEFAULT_COST = 12;
const MIN_COST = 4;
const MAX_COST = 15;
const MIN_PASSWORD_CHARS = 8;
/** bcrypt reads at most 72 bytes of the password; anything after them is silently ignored. */
const MAX_PASSWORD_BYTES = 72;
const RELOAD_NOTE = '(a running smtpgate picks it up on reload)';

interface UserCommandOptions extends FileOptions {
  cost?: string;
}

const USERS_FILE: FileInConfig = { noun: 'users file', setting: 'auth.users', pick: (config) => config.auth?.users };

export function registerUserCommand(program: Command): void {
  const user = program
    .command('user')
    .description('add a user, change a password or remove a user in the users file (htpasswd format, bcrypt)')
    .addHelpText(
      'after',
      `
On a terminal the password is asked for twice, without echo; otherwise it is the first line
of stdin. It needs at least 8 characters, at most 72 bytes, and no NUL, CR or LF.

Commands on one file take turns: each holds FILE.lock beside it while it edits (not while the
password is typed), and another waits up to 10 s for it; a lock left by a command that died
is taken over.

Examples:
  smtpgate user add alice --config /etc/smtpgate/smtpgate.yaml
  smtpgate user passwd alice --file /etc/smtpgate/users
  printf '%s\\n' "$PASSWORD" | smtpgate user add alice --file /etc/smtpgate/users
  smtpgate user del alice --file /etc/smtpgate/users`,
    );

  const withFileOptions = (cmd: Command) =>
    cmd
      .option('-f, --file <path>', 'the users file to edit')
      .option('-c, --config <file>', 'edit the users file named by auth.users in this config');
  const withCostOption = (cmd: Command) =>
    cmd.option('--cost <n>', `bcrypt cost, ${MIN_COST}-${MAX_COST}; each step doubles the work (default ${DEFAULT_COST})`);

  withCostOption(withFileOptions(user.command('add <name>').description('add a user; fails if it already exists')))
    .action((name: string, opts: UserCommandOptions) => runUserCommand('add', name, opts));
  withCostOption(withFileOptions(user.command('passwd <name>').description("change a user's password; fails if the user does not exist")))
    .action((name: string, opts: UserCommandOptions) => runUserCommand('passwd', name, opts));
  withFileOptions(user.command('del <name>').description('remove a user; fails if the user does not exist'))
    .action((name: string, opts: UserCommandOptions) => runUserCommand('del', name, opts));
}

async function runUserCommand(op: UsersFileEdit['op'], username: string, opts: UserCommandOptions): Promise<void> {
  await refusalsToExitCode(async () => {
    process.stdout.write(`${await editUser(op, username, opts)}\n`);
  });
}

/** Performs the edit and returns the confirmation line. */
async function editUser(op: UsersFileEdit['op'], username: string, opts: UserCommandOptions): Promise<string> {
  const cost = op === 'del' ? DEFAULT_COST : parseCost(opts.cost);
  const { file } = await chooseFile(opts, USERS_FILE);
  const target = await followSymlinks(file);

  // Check before asking for a password, so a doomed edit fails before anyone types one.
  const before = await readFileText(target, file);
  if (!before.stats && op !== 'add') throw new CommandRefusal(`${file} does not exist; nothing was changed`);
  const refusal = checkUsersFileEdit(before.text, file, op, username);
  if (refusal) throw new CommandRefusal(refusal.message, 'issues' in refusal ? refusal.issues : []);

  let edit: UsersFileEdit;
  if (op === 'del') {
    edit = { op, username };
  } else {
    const password = await readPassword(username);
    const problem = passwordProblem(password);
    if (problem) throw new CommandRefusal(`${problem}; nothing was changed`);
    edit = { op, username, hash: await bcryptHash(password, cost) };
  }

  // Edited as it is now, under its lock: it may have changed while the password was typed (the
  // lock is not held then, so a slow typist keeps no one waiting), and that change must not be
  // lost by writing back the text read before.
  await editFile(target, file, (current) => {
    const result = applyUsersFileEdit(current.text, file, edit);
    if (!result.ok) throw new CommandRefusal(result.message, 'issues' in result ? result.issues : []);
    return result.text;
  });

  switch (op) {
    case 'add':
      return `added user ${username} to ${file} ${RELOAD_NOTE}`;
    case 'passwd':
      return `changed the password of user ${username} in ${file} ${RELOAD_NOTE}`;
    case 'del':
      return `removed user ${username} from ${file} ${RELOAD_NOTE}`;
  }
}

function parseCost(raw: string | undefined): number {
  if (raw === undefined) return DEFAULT_COST;
  const cost = /^\d{1,2}$/.test(raw) ? Number(raw) : NaN;
  if (!(cost >= MIN_COST && cost <= MAX_COST)) {
    throw new CommandRefusal(`--cost: expected a whole number from ${MIN_COST} to ${MAX_COST} (default ${DEFAULT_COST}), found ${JSON.stringify(raw)}`);
  }
  return cost;
}

/** Why a password is refused, or undefined when it is acceptable. */
export function passwordProblem(password: string): string | undefined {
  if (password === '') return 'the password is empty';
  // SASL PLAIN (RFC 4616) separates its fields with NUL; CR and LF would end the line on stdin.
  if (/[\0\r\n]/.test(password)) return 'the password contains NUL, CR or LF';
  const chars = [...password].length;
  if (chars < MIN_PASSWORD_CHARS) return `the password is too short (${chars} characters); use at least ${MIN_PASSWORD_CHARS}`;
  const bytes = Buffer.byteLength(password, 'utf8');
  if (bytes > MAX_PASSWORD_BYTES) return `the password is ${bytes} bytes long; bcrypt ignores everything after byte ${MAX_PASSWORD_BYTES}, so use at most ${MAX_PASSWORD_BYTES}`;
  return undefined;
}

async function readPassword(username: string): Promise<string> {
  const stdin = process.stdin;
  if (!stdin.isTTY) {
    const line = await readFirstLine(stdin);
    if (line === undefined) throw new CommandRefusal('no password: stdin is not a terminal and is empty (pipe the password as its first line)');
    return line;
  }
  const [first = '', again] = await readHiddenAnswers(stdin as ReadStream, [`Password for ${username}: `, 'Again: ']);
  if (first !== again) throw new CommandRefusal('the passwords do not match; nothing was changed');
  return first;
}

/** The first line of a stream without its "\n" or "\r\n"; undefined if the stream is empty. */
async function readFirstLine(stream: NodeJS.ReadableStream): Promise<string | undefined> {
  const limit = 1024;
  const chunks: Buffer[] = [];
  let length = 0;
  let sawData = false;
  for await (const chunk of stream) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    sawData ||= buf.length > 0;
    const newline = buf.indexOf(0x0a);
    chunks.push(newline >= 0 ? buf.subarray(0, newline) : buf);
    length += buf.length;
    if (newline >= 0 || length > limit) break;
  }
  if (!sawData) return undefined;
  const bytes = Buffer.concat(chunks);
  if (bytes.length > limit) throw new CommandRefusal(`the first line of stdin is longer than ${limit} bytes; it should be the password`);
  const line = bytes.at(-1) === 0x0d ? bytes.subarray(0, -1) : bytes;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(line);
  } catch {
    throw new CommandRefusal('the password on stdin is not valid UTF-8');
  }
}

/**
 * Asks each prompt in turn on a terminal and reads one line for each, without echo. Raw mode
 * is on before the first prompt is shown and stays on until the last answer, so typing ahead
 * never echoes a password. Ctrl-C, or Ctrl-D on an empty line, aborts.
 */
function readHiddenAnswers(input: ReadStream, prompts: readonly string[]): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const out = process.stderr;
    const answers: string[] = [];
    let value = '';
    const wasRaw = input.isRaw;
    const finish = (err?: Error) => {
      input.removeListener('data', onData);
      input.setRawMode(wasRaw);
      input.pause();
      out.write('\n');
      if (err) reject(err);
      else resolve(answers);
    };
    const onData = (text: string) => {
      for (const ch of text) {
        if (ch === '\r' || ch === '\n') {
          answers.push(value);
          value = '';
          if (answers.length === prompts.length) return finish();
          out.write(`\n${prompts[answers.length]}`);
        } else if (ch === '\u0003' || (ch === '\u0004' && value === '')) {
          return finish(new CommandRefusal('aborted; nothing was changed'));
        } else if (ch === '\u007f' || ch === '\b') {
          value = [...value].slice(0, -1).join('');
        } else if (ch === '\u0015') {
          value = ''; // Ctrl-U: erase the line, as a terminal would
        } else {
          value += ch;
        }
      }
    };
    input.setRawMode(true);
    input.setEncoding('utf8');
    input.on('data', onData);
    out.write(prompts[0] ?? '');
    input.resume();
  });
}
