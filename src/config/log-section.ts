/**
 * The `log:` section: level, the primary stream (stdout or a file, and its format) and an
 * optional syslog server that gets every line as well. Relative paths are resolved against
 * the config file's folder.
 */
import net from 'node:net';
import { z } from 'zod';
import { parseSize } from '../parsing/units.js';
import { SYSLOG_FACILITIES } from '../logging/rfc5424.js';
import { filePathIn } from './file-path.js';

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;
const FORMATS = ['auto', 'json', 'journal', 'pretty'] as const;
/** RFC 1123 host names: labels of letters, digits and inner hyphens. */
const HOST_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;
/** RFC 5426 §3.1 and RFC 5425 §4.1: the registered ports. */
const DEFAULT_PORTS = { udp: 514, tcp: 514, tls: 6514 } as const;

export function logSection(baseDir: string) {
  const filePath = filePathIn(baseDir);

  const syslog = z
    .object({
      transport: z.enum(['udp', 'tcp', 'tls']),
      host: z.string().refine((h) => net.isIP(h) !== 0 || HOST_NAME.test(h), { message: 'expected a host name or an IP address (no port, no brackets: the port goes in log.syslog.port), e.g. siem.corp.example or 10.0.0.9' }),
      /** 514 for udp and tcp, 6514 for tls. */
      port: z.number().int().min(1, 'expected a port from 1 to 65535').max(65535, 'expected a port from 1 to 65535').optional(),
      /** A name (mail, local0 … local7, …) or its number 0-23. */
      facility: z
        .union([z.enum(Object.keys(SYSLOG_FACILITIES) as [keyof typeof SYSLOG_FACILITIES]), z.number().int().min(0).max(23)])
        .default('mail')
        .transform((f) => (typeof f === 'number' ? f : SYSLOG_FACILITIES[f])),
      /** RFC 5424 APP-NAME. */
      appName: z.string().regex(/^[\x21-\x7e]{1,48}$/, 'expected 1 to 48 printable ASCII characters without spaces (RFC 5424 APP-NAME)').default('smtpgate'),
      /** Messages held while the server is unreachable or slow; beyond this they are dropped and counted. */
      bufferSize: z
        .union([z.string(), z.number()])
        .default('1MiB')
        .transform((v, ctx) => {
          const bytes = parseSize(v);
          if (bytes === undefined || bytes < 4096) {
            ctx.addIssue({ code: 'custom', message: `expected a size of at least 4KiB such as "1MiB" or "16MB", found ${JSON.stringify(v)}` });
            return z.NEVER;
          }
          return bytes;
        }),
      /** tls: the CA bundle that signed the server's certificate (default: the system's CAs). */
      ca: filePath.optional(),
      /** tls: the name the server's certificate must carry (default: host). */
      tlsServerName: z.string().min(1).optional(),
      /** tls: a client certificate and its key, for a server that asks for one. */
      cert: filePath.optional(),
      key: filePath.optional(),
    })
    .strict()
    .superRefine((s, ctx) => {
      if (s.transport !== 'tls') {
        for (const field of ['ca', 'tlsServerName', 'cert', 'key'] as const) {
          if (s[field] !== undefined) ctx.addIssue({ code: 'custom', path: [field], message: `${field} is only used with transport: tls (this is ${s.transport}); use transport: tls, or remove ${field}` });
        }
      }
      if ((s.cert === undefined) !== (s.key === undefined)) {
        ctx.addIssue({ code: 'custom', path: [s.cert === undefined ? 'cert' : 'key'], message: 'a client certificate needs both cert and key; give both, or neither' });
      }
    })
    .transform((s) => ({ ...s, port: s.port ?? DEFAULT_PORTS[s.transport] }));

  return z
    .object({
      level: z.enum(LEVELS).default('info'),
      /** auto: journal when stdout is the journal (systemd), json otherwise. */
      format: z.enum(FORMATS).default('auto'),
      /** Append to this file instead of stdout; SIGUSR1 reopens it (logrotate). */
      file: filePath.optional(),
      /** Every line to a syslog server too (a SIEM). */
      syslog: syslog.optional(),
    })
    .strict()
    .superRefine((l, ctx) => {
      if (l.file !== undefined && (l.format === 'journal' || l.format === 'pretty')) {
        ctx.addIssue({ code: 'custom', path: ['format'], message: `format: ${l.format} is for stdout, not for log.file; use format: json (or auto), or remove log.file` });
      }
      if (l.syslog !== undefined && l.format === 'pretty') {
        ctx.addIssue({ code: 'custom', path: ['format'], message: 'format: pretty is for a terminal and cannot be combined with log.syslog; use format: auto or json, or remove log.syslog' });
      }
    })
    .default({ level: 'info', format: 'auto' });
}

export type LogConfig = z.output<ReturnType<typeof logSection>>;
