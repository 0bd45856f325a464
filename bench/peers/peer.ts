/**
 * A peer is one way of getting mail from the load generator into smtp-sink: straight in
 * ("direct", the physical limit), through smtpgate (plain, or with limits and policy on),
 * through nginx's mail proxy, or through Haraka with queue/smtp_proxy.
 *
 * Each measured run starts a fresh instance against a fresh sink, so one workload's memory or
 * counters never leak into the next.
 */

export type PeerId = 'direct' | 'smtpgate' | 'smtpgate+policy' | 'nginx' | 'haraka';

export const PEER_IDS: readonly PeerId[] = ['direct', 'smtpgate', 'smtpgate+policy', 'nginx', 'haraka'];

/** Why a peer can't run on this machine, and the command that fixes it. */
export interface Unavailable {
  readonly reason: string;
  readonly install: string;
}

export interface TlsFiles {
  readonly cert: string;
  readonly key: string;
}

export interface PeerContext {
  /** A fresh folder for this instance's config and logs. */
  readonly dir: string;
  readonly sinkPort: number;
  readonly sinkPid: number;
  readonly tls: TlsFiles;
  /** smtpgate only: the htpasswd users file (W5 picks the bcrypt cost through it). */
  readonly usersFile: string;
  /** smtpgate only: turn auth.cache on (W5-cached), with the documented example's TTLs. */
  readonly authCache?: boolean;
  /** smtpgate only: the app passwords file (auth.credentials) in front of the users file (W5-app). */
  readonly credentialsFile?: string;
  /** smtpgate only: check passwords in this directory (auth.backend: ldap) instead of the users file (W5-ldap). */
  readonly ldap?: { readonly url: string; readonly ca: string; readonly bindDn: string; readonly bindPasswordFile: string; readonly userBase: string };
  /** smtpgate only: DKIM-sign mail for this domain with this key file (W4-dkim). */
  readonly dkim?: { readonly domain: string; readonly keyFile: string };
  /** smtpgate only: log.level (W1-quiet turns the info lines off); info when not given. */
  readonly logLevel?: 'info' | 'warn';
  /** smtpgate only: write a V8 CPU profile (node --cpu-prof) into this folder. */
  readonly profileDir?: string;
  /** smtpgate only: extra node arguments (experiments: --max-semi-space-size, --import). */
  readonly nodeArgs?: readonly string[];
  /** smtpgate only: extra environment variables (experiments: MALLOC_ARENA_MAX, …). */
  readonly env?: Readonly<Record<string, string>>;
  /** Processes serving mail (smtpgate workers, nginx worker processes); 1 when not given. */
  readonly processes?: number;
}

export interface RunningPeer {
  /**
   * The process whose memory is measured (nginx's single process, Haraka's, smtpgate's,
   * smtp-sink's); with several processes the top one (CPU is counted over its whole tree).
   */
  readonly pid: number;
  /** Plaintext SMTP without AUTH; 127.0.0.1 may relay (smtp-source's workloads). */
  readonly port: number;
  /** STARTTLS (W6 after TLS, and for smtpgate W5 with AUTH), when the peer has it. */
  readonly startTlsPort?: number;
  /** With several processes, how many connections each (by pid) has accepted so far (smtpgate: from its log). */
  connectionsPerProcess?(): Promise<ReadonlyMap<number, number>>;
  stop(): Promise<void>;
}

export interface Peer {
  readonly id: PeerId;
  /** One line for the report: what runs, which version. */
  readonly description: string;
  /** One-time setup for the whole bench run (Haraka's npm install); undefined when ready. */
  prepare(workDir: string): Promise<Unavailable | undefined>;
  start(ctx: PeerContext): Promise<RunningPeer>;
}
