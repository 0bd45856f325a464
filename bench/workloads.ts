/**
 * The workloads of the "Benchmarks" issue, with the counts for the default run and for
 * `--quick`, and the targets smtpgate is held to (ratios within one run).
 */
import type { SourceLoad } from './lib/postfix-tools.js';
import type { PeerId } from './peers/peer.js';

export type WorkloadId = 'W1' | 'W1-quiet' | 'W2' | 'W2-2proc' | 'W2-greeting' | 'W3' | 'W4' | 'W4-dkim' | 'W5' | 'W5-cost4' | 'W5-app' | 'W5-cached' | 'W5-ldap' | 'W5-ldap-cached' | 'W6-plain' | 'W6-tls';

/** What a run reports as its value, and which way is better. */
export interface Metric {
  readonly unit: string;
  readonly better: 'higher' | 'lower';
  readonly decimals: number;
}

export type Target =
  /** smtpgate's value ÷ another peer's (same rep), compared with `threshold`. */
  | { readonly kind: 'ratio'; readonly against: PeerId; readonly op: '>=' | '<='; readonly threshold: number }
  /** smtpgate's value compared with a fixed number; `measure` names an extra figure of the run. */
  | { readonly kind: 'absolute'; readonly measure: 'value' | 'rssGrowthMb'; readonly op: '<=' | '<'; readonly threshold: number; readonly unit: string }
  /** smtpgate's value ÷ its own value in another workload (W5 ÷ W2): reported, no threshold. */
  | { readonly kind: 'info-ratio'; readonly againstWorkload: WorkloadId }
  /** smtpgate's value ÷ its own value in another workload (same rep), compared with `threshold`. */
  | { readonly kind: 'workload-ratio'; readonly againstWorkload: WorkloadId; readonly op: '>='; readonly threshold: number }
  /** smtpgate's CPU seconds per message ÷ its own in another workload (same rep), compared with `threshold`. */
  | { readonly kind: 'cpu-ratio'; readonly againstWorkload: WorkloadId; readonly op: '<='; readonly threshold: number };

interface Common {
  readonly id: WorkloadId;
  readonly title: string;
  readonly metric: Metric;
  readonly targets: readonly Target[];
  /** Peers this workload applies to; the others show "n/a" with `notApplicable`. */
  readonly peers: readonly PeerId[];
  readonly notApplicable?: string;
  /**
   * A memory measurement: it runs in the first repetition only unless --memory-reps says
   * otherwise (CPU noise doesn't move it, and the time it takes is better spent on W1–W5).
   */
  readonly memory?: boolean;
  /** smtpgate's log.level (default info, as the project ships it). */
  readonly logLevel?: 'info' | 'warn';
  /** smtpgate DKIM-signs every message (dkim: for the sender's domain, corp.test). */
  readonly dkim?: boolean;
  /**
   * Processes serving mail (1 unless given): smtpgate `workers: N` (with the Redis limits
   * store the config check requires), nginx `master_process on; worker_processes N`. CPU is
   * then counted over the whole process tree.
   */
  readonly processes?: number;
}

export type Workload =
  | (Common & {
      readonly kind: 'source';
      readonly load: SourceLoad;
      readonly measure: 'msgPerSec' | 'msPerMessagePerSession' | 'mbPerSec';
      /**
       * Sent through the peer right before the timed run, untimed: the steady state the timed
       * run should see (JIT-compiled code, grown pools and heaps). Every peer gets the same.
       */
      readonly warmUp: SourceLoad;
    })
  | (Common & {
      readonly kind: 'tls-auth';
      readonly sessions: number;
      readonly concurrency: number;
      readonly bytes: number;
      /** Which users file smtpgate loads: the project default cost, or cost 4 (with `ldap`: unused). */
      readonly bcryptCost: 'default' | 4;
      /**
       * Where smtpgate checks passwords: the users file, or (`ldap`) a slapd the run starts with
       * BENCH_USERS in it (bench/lib/bench-directory.ts), every sign-in a search + bind over ldaps://.
       */
      readonly authSource: 'users-file' | 'ldap';
      /** How many of BENCH_USERS the sessions take turns signing in as. */
      readonly users: number;
      /**
       * smtpgate runs with `auth.cache` on, and each user signs in once, one after the other,
       * untimed, before the timed run: the timed run is the cache's steady state.
       */
      readonly authCache: boolean;
      /**
       * Every session signs in with its user's app password (`auth.credentials`, one per bench
       * user: bench/lib/bench-app-passwords.ts) instead of the account password: a keyed hash
       * against the file, then the account looked up in the users file, without bcrypt.
       */
      readonly appPasswords: boolean;
    })
  | (Common & { readonly kind: 'idle'; readonly count: number; readonly tls: boolean })
  /** Time from connect to the 220 greeting, one connection after the other. */
  | (Common & { readonly kind: 'greeting'; readonly connections: number });

const ALL: readonly PeerId[] = ['direct', 'smtpgate', 'smtpgate+policy', 'nginx', 'haraka'];
const SMTPGATE_ONLY: readonly PeerId[] = ['smtpgate', 'smtpgate+policy'];

/** The warm-up of the first two rounds, kept for W4 so its RSS growth stays comparable. */
const SMALL_WARM_UP: SourceLoad = { reuse: true, sessions: 10, messages: 200, length: 4096 };

const MSG_PER_SEC: Metric = { unit: 'msg/s', better: 'higher', decimals: 0 };

/** What every W5 variant shares: 30 sessions at a time, a 4 KB message each, smtpgate only. */
const TLS_AUTH = {
  kind: 'tls-auth',
  concurrency: 30,
  bytes: 4096,
  metric: { unit: 'sessions/s', better: 'higher', decimals: 1 },
  peers: SMTPGATE_ONLY,
  notApplicable: 'n/a',
} as const;

/**
 * The users in the bench's users files (run.ts writes both, at the default cost and at cost 4):
 * W5 and W5-cost4 sign in as the first, W5-cached as each in turn. The W5-ldap workloads sign
 * in as the same users, kept in a directory instead; W5-app as the first, with an app password
 * (run.ts makes one per user).
 */
export const BENCH_USERS: readonly { readonly name: string; readonly password: string }[] = ['bench', 'bench2', 'bench3', 'bench4'].map((name, i) => ({
  name,
  password: `bench-password-${123 + i}`,
}));

export function workloads(quick: boolean): Workload[] {
  const q = (full: number, small: number) => (quick ? small : full);
  /** W4 and W4-dkim: two sessions of large messages, one message per connection. */
  const large = {
    kind: 'source',
    load: { reuse: false, sessions: 2, messages: q(4, 2), length: q(50_000_000, 10_000_000) },
    // Small messages only: RSS growth is measured from the end of the warm-up, as before.
    warmUp: SMALL_WARM_UP,
    measure: 'mbPerSec',
    metric: { unit: 'MB/s', better: 'higher', decimals: 1 },
  } as const;
  /** 200 sessions of 4 KB messages, in msg/s: connections reused or not, `messages` timed after `warmUp`. */
  const throughput = (reuse: boolean, messages: number, warmUp: number) =>
    ({
      kind: 'source',
      load: { reuse, sessions: 200, messages, length: 4096 },
      warmUp: { reuse, sessions: 200, messages: warmUp, length: 4096 },
      measure: 'msgPerSec',
      metric: MSG_PER_SEC,
    }) as const;
  /** W1 and W1-quiet differ only in smtpgate's log level. */
  const w1 = throughput(true, q(8000, 800), q(4000, 400));
  /** W2 and W2-2proc: one message per connection. */
  const w2 = throughput(false, q(4000, 400), q(2000, 200));
  return [
    {
      id: 'W1',
      title: 'W1 throughput, reused connections',
      ...w1,
      peers: ALL,
      targets: [
        { kind: 'ratio', against: 'nginx', op: '>=', threshold: 1.2 },
        { kind: 'ratio', against: 'haraka', op: '>=', threshold: 2.5 },
        // Issue 18: the mail log (a transaction record per message, at info) costs at most 5%
        // CPU per message. W1-quiet runs right after W1 in every repetition.
        { kind: 'cpu-ratio', againstWorkload: 'W1-quiet', op: '<=', threshold: 1.05 },
      ],
    },
    {
      id: 'W1-quiet',
      title: 'W1 with log.level: warn (no transaction records, no connect and close lines): the A/B for the mail log\'s cost',
      ...w1,
      peers: SMTPGATE_ONLY,
      notApplicable: 'n/a',
      logLevel: 'warn',
      targets: [],
    },
    {
      id: 'W2',
      title: 'W2 new connection per message',
      ...w2,
      peers: ALL,
      targets: [
        { kind: 'ratio', against: 'nginx', op: '>=', threshold: 1.0 },
        { kind: 'ratio', against: 'haraka', op: '>=', threshold: 3 },
      ],
    },
    {
      id: 'W2-2proc',
      title: 'W2 with two processes: smtpgate workers: 2 (kernel-balanced), nginx worker_processes 2',
      ...w2,
      // W2's warm-up for each process: with half of it each, two workers measured +39% CPU per
      // message against one process, with all of it +9% (docs/benchmarks.md, issue 20).
      warmUp: { ...w2.warmUp, messages: 2 * w2.warmUp.messages },
      processes: 2,
      peers: ['direct', 'smtpgate', 'nginx'],
      notApplicable: 'n/a',
      // Issue 20: two processes each, on a machine whose 2 cores the load generator shares.
      targets: [{ kind: 'ratio', against: 'nginx', op: '>=', threshold: 0.9 }],
    },
    {
      id: 'W2-greeting',
      title: 'W2 detail: time to the 220 greeting (trusted clients, as here, skip the 100 ms early-talker wait: listeners[].greetingDelay)',
      kind: 'greeting',
      connections: q(40, 10),
      metric: { unit: 'ms', better: 'lower', decimals: 1 },
      peers: ALL,
      targets: [],
    },
    {
      id: 'W3',
      title: 'W3 latency, 20 sessions (time per message per session)',
      kind: 'source',
      load: { reuse: true, sessions: 20, messages: q(4000, 400), length: 4096 },
      warmUp: { reuse: true, sessions: 20, messages: q(2000, 200), length: 4096 },
      measure: 'msPerMessagePerSession',
      metric: { unit: 'ms', better: 'lower', decimals: 1 },
      peers: ALL,
      targets: [{ kind: 'ratio', against: 'nginx', op: '<=', threshold: 0.1 }],
    },
    {
      id: 'W4',
      title: `W4 large messages (${q(50, 10)} MB)`,
      ...large,
      peers: ALL,
      targets: [
        { kind: 'ratio', against: 'direct', op: '>=', threshold: 0.8 },
        { kind: 'absolute', measure: 'rssGrowthMb', op: '<', threshold: 32, unit: 'MB RSS growth' },
      ],
    },
    {
      id: 'W4-dkim',
      title: `W4 with DKIM signing on (each ${q(50, 10)} MB message held until its body hash is known: 1 MiB in memory, the rest in the spool file)`,
      ...large,
      peers: SMTPGATE_ONLY,
      notApplicable: 'n/a',
      dkim: true,
      // Issue 19: within 25% of W4 (runs right after W4 in every repetition), RSS bounded as W4's.
      targets: [
        { kind: 'workload-ratio', againstWorkload: 'W4', op: '>=', threshold: 0.75 },
        { kind: 'absolute', measure: 'rssGrowthMb', op: '<', threshold: 32, unit: 'MB RSS growth' },
      ],
    },
    {
      id: 'W5',
      title: 'W5 STARTTLS + AUTH PLAIN + 1 message (bcrypt cost 12, the project default)',
      ...TLS_AUTH,
      sessions: q(40, 10),
      bcryptCost: 'default',
      authSource: 'users-file',
      users: 1,
      authCache: false,
      appPasswords: false,
      targets: [{ kind: 'info-ratio', againstWorkload: 'W2' }],
    },
    {
      id: 'W5-cost4',
      title: 'W5 same, bcrypt cost 4 (TLS + protocol cost without the hash)',
      ...TLS_AUTH,
      sessions: q(400, 60),
      bcryptCost: 4,
      authSource: 'users-file',
      users: 1,
      authCache: false,
      appPasswords: false,
      targets: [{ kind: 'info-ratio', againstWorkload: 'W2' }],
    },
    {
      id: 'W5-app',
      title: 'W5 with app passwords (auth.credentials): W5-cost4\'s sessions, no bcrypt (the users file at cost 12 only looks the user up)',
      ...TLS_AUTH,
      sessions: q(400, 60),
      // Cost 12 on purpose: a sign-in that reached bcrypt after all would run ~50× slower.
      bcryptCost: 'default',
      authSource: 'users-file',
      // One user, as in W5-cost4, so that the two differ only in how the password is checked.
      users: 1,
      authCache: false,
      appPasswords: true,
      // Issue 17: within 20% of bcrypt cost 4 (runs right after W5-cost4 in every repetition).
      targets: [
        { kind: 'workload-ratio', againstWorkload: 'W5-cost4', op: '>=', threshold: 0.8 },
        { kind: 'info-ratio', againstWorkload: 'W5' },
      ],
    },
    {
      id: 'W5-cached',
      title: `W5 with auth.cache on: ${BENCH_USERS.length} users signing in again and again (bcrypt cost 12)`,
      ...TLS_AUTH,
      sessions: q(1000, 100),
      bcryptCost: 'default',
      authSource: 'users-file',
      users: BENCH_USERS.length,
      authCache: true,
      appPasswords: false,
      // Issue 16: a printer or an app that signs in for every message should not pay bcrypt each time.
      targets: [{ kind: 'workload-ratio', againstWorkload: 'W5', op: '>=', threshold: 20 }],
    },
    {
      id: 'W5-ldap',
      title: 'W5 through an LDAP directory (slapd on this machine, ldaps://): every AUTH a search + bind',
      ...TLS_AUTH,
      sessions: q(400, 60),
      bcryptCost: 'default',
      authSource: 'ldap',
      users: BENCH_USERS.length,
      authCache: false,
      appPasswords: false,
      targets: [{ kind: 'info-ratio', againstWorkload: 'W5' }],
    },
    {
      id: 'W5-ldap-cached',
      title: `W5-ldap with auth.cache on: ${BENCH_USERS.length} directory users signing in again and again`,
      ...TLS_AUTH,
      sessions: q(1000, 100),
      bcryptCost: 'default',
      authSource: 'ldap',
      users: BENCH_USERS.length,
      authCache: true,
      appPasswords: false,
      // Information: the directory's search + bind is cheap next to bcrypt, so no target here.
      targets: [{ kind: 'info-ratio', againstWorkload: 'W5-ldap' }],
    },
    {
      id: 'W6-plain',
      title: `W6 ${q(5000, 500)} idle connections, plaintext (RSS per connection)`,
      kind: 'idle',
      count: q(5000, 500),
      tls: false,
      memory: true,
      metric: { unit: 'KB/conn', better: 'lower', decimals: 1 },
      peers: ALL,
      targets: [{ kind: 'absolute', measure: 'value', op: '<=', threshold: 64, unit: 'KB' }],
    },
    {
      id: 'W6-tls',
      title: `W6 ${q(5000, 500)} idle connections after STARTTLS (RSS per connection)`,
      kind: 'idle',
      count: q(5000, 500),
      tls: true,
      memory: true,
      metric: { unit: 'KB/conn', better: 'lower', decimals: 1 },
      peers: ['smtpgate', 'smtpgate+policy', 'nginx', 'haraka'],
      notApplicable: 'n/a',
      targets: [],
    },
  ];
}

/** One line of smtp-source arguments for the report ("-d -s 200 -m 8000 -l 4096"). */
export function describeLoad(w: Workload): string {
  switch (w.kind) {
    case 'source':
      return `smtp-source ${w.load.reuse ? '-d ' : ''}-s ${w.load.sessions} -m ${w.load.messages} -l ${w.load.length}`;
    case 'tls-auth':
      return `${w.sessions} sessions, ${w.concurrency} concurrent, ${w.bytes}-byte message, ${describeSignIn(w)}${
        w.users > 1 ? `, ${w.users} users` : ''
      }${w.authCache ? ', auth.cache on (warmed: one sign-in per user first)' : ''}`;
    case 'idle':
      return `${w.count} connections${w.tls ? ' + STARTTLS' : ''}, then idle`;
    case 'greeting':
      return `${w.connections} connections one after the other, median connect → 220`;
  }
}

/** How a tls-auth workload's sign-ins are checked. */
function describeSignIn(w: Extract<Workload, { kind: 'tls-auth' }>): string {
  const bcrypt = `bcrypt cost ${w.bcryptCost === 'default' ? '12 (default)' : w.bcryptCost}`;
  if (w.authSource === 'ldap') return 'LDAP search + bind ({SSHA} passwords, ldaps:// to slapd)';
  if (w.appPasswords) return `app password (HMAC-SHA-256 against auth.credentials; the users file, ${bcrypt}, only looked up)`;
  return bcrypt;
}
