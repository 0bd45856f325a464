/**
 * The `dkim:` section of the config file (README "DKIM signing"). Opt-in per domain: a
 * message is signed only when its From: domain is listed here, and only for senders smtpgate
 * vouches for (signed-in users; clients in a listener's trusted networks unless
 * `trustedNetworks: false`). Key paths are relative to the config file.
 */
import { domainToASCII } from 'node:url';
import os from 'node:os';
import { z } from 'zod';
import { size } from '../limits/config.js';
import { duration } from './auth-section.js';
import { filePathIn } from './file-path.js';

/**
 * Signed unless the config names its own list: the fields whose change alters what the reader
 * sees (RFC 6376 §5.4.1), and the list headers RFC 8058 one-click unsubscribe needs signed.
 */
export const DEFAULT_SIGNED_HEADERS = [
  'From',
  'Sender',
  'Reply-To',
  'Subject',
  'Date',
  'Message-ID',
  'To',
  'Cc',
  'MIME-Version',
  'Content-Type',
  'Content-Transfer-Encoding',
  'In-Reply-To',
  'References',
  'List-Id',
  'List-Unsubscribe',
  'List-Unsubscribe-Post',
] as const;

/** RFC 6376 §3.1: a selector is a dot-separated list of DNS labels. */
const SELECTOR = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const HEADER_NAME = /^[!-9;-~]+$/;

/** A domain as DNS has it: IDNs in their A-label (xn--) form, lower case. */
const domain = z.string().transform((value, ctx) => {
  const ascii = domainToASCII(value.trim().replace(/\.$/, ''));
  if (!ascii || !ascii.includes('.') || !/^[a-z0-9.-]+$/.test(ascii)) {
    ctx.addIssue({ code: 'custom', message: `expected a domain such as example.com, found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return ascii;
});

export function dkimSection(baseDir: string) {
  const filePath = filePathIn(baseDir);
  const signingDomain = z
    .object({
      /** The From: domain this entry signs for, and the signature's d= tag. */
      domain,
      /** The s= tag: the key's DNS record is SELECTOR._domainkey.DOMAIN. */
      selector: z.string().regex(SELECTOR, 'expected a selector such as "mail2025" (letters, digits, "-", dots between labels)'),
      /** PEM file with the RSA private key (smtpgate dkim keygen writes one). */
      key: filePath,
      /** Header fields to sign (h=); From is required (RFC 6376 §5.4). */
      headers: z
        .array(z.string().regex(HEADER_NAME, 'expected a header name such as Subject (no colon, no spaces)'))
        .min(1)
        .refine((names) => names.some((n) => n.toLowerCase() === 'from'), { message: 'the list must include From: RFC 6376 §5.4 requires the From field to be signed' })
        .optional(),
    })
    .strict();
  return z
    .object({
      /**
       * Where a message larger than memoryThreshold is held until its body hash is known. The
       * file is unlinked as soon as it is opened: nothing is left behind, even after a crash.
       */
      spoolDir: filePath.default(os.tmpdir()),
      /** Bytes of one message held in memory before it goes to spoolDir. */
      memoryThreshold: size.default(1024 * 1024),
      /** Sign mail from clients in a listener's trusted networks that did not sign in. */
      trustedNetworks: z.boolean().default(true),
      /** How often the key files are checked for changes (like tls.reloadInterval). */
      reloadInterval: duration.default(5_000),
      domains: z.array(signingDomain).min(1, 'expected at least one domain to sign for'),
    })
    .strict()
    .superRefine((d, ctx) => {
      const seen = new Set<string>();
      d.domains.forEach((e, i) => {
        const id = `${e.selector}._domainkey.${e.domain}`;
        if (seen.has(id)) ctx.addIssue({ code: 'custom', path: ['domains', i, 'selector'], message: `${id} is listed twice; each selector of a domain once` });
        seen.add(id);
      });
    });
}

export type DkimConfig = z.output<ReturnType<typeof dkimSection>>;
export type DkimDomainConfig = DkimConfig['domains'][number];
