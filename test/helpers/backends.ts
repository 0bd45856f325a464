/**
 * In-process test backends: a recording smtp-server that keeps every envelope and message,
 * and can be told to refuse a sender, a recipient, DATA or the final dot.
 */
import { SMTPServer, type SMTPServerSession } from 'smtp-server';

export interface RecordedMessage {
  readonly from: string;
  readonly to: string[];
  readonly data: Buffer;
  readonly xclient: Record<string, string>;
  /** XFORWARD attributes the backend was given (only with `xforward: true`). */
  readonly xforward: Record<string, string>;
  /** The login smtpgate itself authenticated with (only with `auth`). */
  readonly authUser?: string;
  readonly helo: string;
}

export interface RecordingBackendOptions {
  /** Recipients to refuse at RCPT: address → reply (e.g. "550 5.1.1 No such user"). */
  refuseRcpt?: Record<string, string>;
  refuseMail?: string;
  /** Reply to the final dot instead of 250. */
  finalReply?: string;
  xclient?: boolean;
  /** Accept XFORWARD from 127.0.0.1 (and then not XCLIENT, as a Postfix that only trusts XFORWARD). */
  xforward?: boolean;
  /** Demand AUTH (PLAIN or LOGIN, cleartext allowed) with exactly these credentials before MAIL. */
  auth?: { user: string; password: string };
  /**
   * Demand AUTH XOAUTH2 before MAIL, and accept the bearer token when `check` says 'ok' for
   * the user. Otherwise answer as Google does: a 334 with a base64 JSON error, then 535.
   */
  xoauth2?: { check(token: string, user: string): string };
}

export interface RecordingBackend {
  readonly port: number;
  readonly messages: RecordedMessage[];
  /** Commands counted per session: how many sessions were opened. */
  readonly sessions: number;
  /** Each AUTH XOAUTH2 (with `xoauth2`): the user and what the token check said. */
  readonly xoauth2Attempts: { user: string; result: string }[];
  close(): Promise<void>;
}

function replyError(spec: string): Error {
  const m = /^(\d{3}) (.*)$/.exec(spec);
  if (!m) throw new Error(`bad reply spec ${spec}`);
  return Object.assign(new Error(m[2]), { responseCode: Number(m[1]) });
}

export async function startRecordingBackend(opts: RecordingBackendOptions = {}): Promise<RecordingBackend> {
  const messages: RecordedMessage[] = [];
  const xoauth2Attempts: { user: string; result: string }[] = [];
  let sessions = 0;
  const demandsAuth = opts.auth !== undefined || opts.xoauth2 !== undefined;
  const server = new SMTPServer({
    name: 'backend.test',
    authOptional: !demandsAuth,
    disabledCommands: demandsAuth ? ['STARTTLS'] : ['AUTH', 'STARTTLS'],
    ...(opts.auth ? { authMethods: ['PLAIN', 'LOGIN'], allowInsecureAuth: true } : {}),
    ...(opts.xoauth2 ? { authMethods: ['XOAUTH2'], allowInsecureAuth: true } : {}),
    disableReverseLookup: true,
    useXClient: opts.xclient === false || opts.xforward ? false : ['127.0.0.1', '::1'],
    useXForward: opts.xforward ? ['127.0.0.1', '::1'] : false,
    logger: false,
    onAuth(auth, _session, cb) {
      // XCLIENT LOGIN=… from an authorised proxy is accepted as smtp-server's default does.
      if (auth.method === 'XCLIENT') return cb(null, { user: auth.username });
      if (auth.method === 'XOAUTH2' && opts.xoauth2) {
        const result = opts.xoauth2.check(auth.accessToken ?? '', auth.username ?? '');
        xoauth2Attempts.push({ user: auth.username ?? '', result });
        if (result === 'ok') return cb(null, { user: auth.username });
        return cb(null, { data: { status: '401', schemes: 'bearer', scope: 'https://mail.google.com/' } });
      }
      const want = opts.auth;
      if (want && auth.username === want.user && auth.password === want.password) return cb(null, { user: auth.username });
      cb(Object.assign(new Error('5.7.8 Authentication credentials invalid'), { responseCode: 535 }));
    },
    onConnect(_session, cb) {
      sessions++;
      cb();
    },
    onMailFrom(address, _session, cb) {
      if (opts.refuseMail) return cb(replyError(opts.refuseMail));
      void address;
      cb();
    },
    onRcptTo(address, _session, cb) {
      const refuse = opts.refuseRcpt?.[address.address];
      if (refuse) return cb(replyError(refuse));
      cb();
    },
    onData(stream, session: SMTPServerSession, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        if (opts.finalReply) return cb(replyError(opts.finalReply));
        messages.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
          data: Buffer.concat(chunks),
          xclient: Object.fromEntries([...session.xClient.entries()].map(([k, v]) => [k, String(v)])),
          xforward: Object.fromEntries([...session.xForward.entries()].map(([k, v]) => [k, String(v)])),
          ...(session.user === undefined ? {} : { authUser: String(session.user) }),
          helo: session.hostNameAppearsAs,
        });
        cb(null, `2.0.0 Ok: queued as Q${messages.length}`);
      });
    },
  });
  server.on('error', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const addr = server.server.address();
  return {
    port: addr && typeof addr === 'object' ? addr.port : 0,
    messages,
    xoauth2Attempts,
    get sessions() {
      return sessions;
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
