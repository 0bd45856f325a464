/**
 * A log line as an RFC 5424 syslog message, and the syslog severities of pino's levels (which
 * the journald prefix uses too). Pure: (JSON line, pino level, who we are) → message text.
 */

/** RFC 5424 §6.2.1 severities by pino level number: fatal crit, error err, warn warning, info info, debug/trace debug. */
const SEVERITY_BY_LEVEL = new Map<number, number>([
  [60, 2],
  [50, 3],
  [40, 4],
  [30, 6],
  [20, 7],
  [10, 7],
]);

export function syslogSeverity(pinoLevel: number): number {
  return SEVERITY_BY_LEVEL.get(pinoLevel) ?? 6;
}

/** RFC 5424 §6.2.1 facility codes by name (RFC 3164's table). */
export const SYSLOG_FACILITIES = {
  kern: 0, user: 1, mail: 2, daemon: 3, auth: 4, syslog: 5, lpr: 6, news: 7, uucp: 8, cron: 9, authpriv: 10, ftp: 11,
  local0: 16, local1: 17, local2: 18, local3: 19, local4: 20, local5: 21, local6: 22, local7: 23,
} as const;

export interface SyslogIdentity {
  /** 0-23. */
  readonly facility: number;
  readonly hostname: string;
  /** APP-NAME, at most 48 printable ASCII characters. */
  readonly appName: string;
  readonly procId: number;
}

/**
 * The SD-ID of smtpgate's structured data. 32473 is the private enterprise number RFC 5612
 * sets aside for documentation; smtpgate has none of its own, and any receiver keys on the
 * whole name.
 */
export const SD_ID = 'smtpgate@32473';

/** Fields of a line that go into the structured data too, where a SIEM indexes them without parsing MSG. */
const SD_FIELDS = ['session', 'listener', 'client', 'user', 'stage', 'reason', 'rule', 'outcome'] as const;

/** RFC 5424 §6.3.3: '"', '\' and ']' are escaped in a PARAM-VALUE. */
function paramValue(v: string): string {
  return v.replace(/["\\\]]/g, (c) => `\\${c}`);
}

function structuredData(fields: Record<string, unknown>): string {
  let params = '';
  for (const name of SD_FIELDS) {
    // The transaction record names the user under auth.user.
    const v = name === 'user' && fields.user === undefined ? (fields.auth as { user?: unknown } | undefined)?.user : fields[name];
    if (typeof v === 'string' || typeof v === 'number') params += ` ${name}="${paramValue(String(v))}"`;
  }
  return params === '' ? '-' : `[${SD_ID}${params}]`;
}

/** HOSTNAME and APP-NAME are PRINTUSASCII (§6): anything else is left out, and an empty one is NILVALUE. */
export function printUsAscii(v: string, max: number): string {
  return v.replace(/[^\x21-\x7e]/g, '').slice(0, max) || '-';
}

/**
 * `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - SD MSG`; MSG is the JSON line itself, so a SIEM
 * gets every field. A line that doesn't parse (it always should) still goes, with NILVALUE
 * time and no structured data.
 */
export function syslogMessage(line: string, pinoLevel: number, who: SyslogIdentity): string {
  const json = line.endsWith('\n') ? line.slice(0, -1) : line;
  let fields: Record<string, unknown> = {};
  try {
    fields = JSON.parse(json) as Record<string, unknown>;
  } catch {
    // Sent as it is.
  }
  const pri = who.facility * 8 + syslogSeverity(pinoLevel);
  // pino's isoTime: RFC 3339 with milliseconds and Z, as §6.2.3 wants.
  const time = typeof fields.time === 'string' ? fields.time : '-';
  return `<${pri}>1 ${time} ${who.hostname} ${who.appName} ${who.procId} - ${structuredData(fields)} ${json}`;
}

/** RFC 6587 §3.4.1 octet counting (RFC 5425 §4.3 for TLS): "LENGTH SP MSG", LENGTH in octets. */
export function octetCounted(message: string): Buffer {
  const body = Buffer.from(message, 'utf8');
  return Buffer.concat([Buffer.from(`${body.length} `, 'ascii'), body]);
}
