/**
 * The "with policy" configuration: what a real deployment switches on, so that the cost of
 * the checks shows in the numbers.
 *
 * - Limits: every per-IP, per-user and per-sender rate on (memory store, the single-instance
 *   default), set far above the load so nothing is refused — the counting still happens.
 * - Policy: fourteen rules modelled on the shipped `policies/` set — a blocked-networks list,
 *   sender binding, a group recipient rule, a recipient cap, a header tag, per-user and per-IP
 *   `limit` rules, size rules, and the header/attachment rules that make the MIME scanner read
 *   every message's header block.
 * - A user attributes file (sender binding: the W5 users `bench`, `bench2`… may send as sender@corp.test).
 *
 * smtp-source's sessions are unauthenticated but trusted (127.0.0.1), so sender binding and
 * the per-user rules evaluate but don't apply to them; W5 authenticates and gets them all.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BENCH_USERS } from '../workloads.js';

/**
 * The AUTH lockout's counts, above W5's 30 concurrent sign-ins of one user from 127.0.0.1: an
 * attempt holds a place in them while its password is verified (limits.ts authAllowed, the
 * reservation), so at the defaults (5 per user and address, 20 per address) the 6th parallel
 * sign-in would be refused with 454 although no password is wrong.
 */
const AUTH_ABOVE_W5 = `    failuresPerUserIp: 100/15m
    failuresPerIp: 100/15m
`;

/** The `limits:` section with every rate on. */
export const POLICY_LIMITS_YAML = `limits:
  maxMessageBytes: 60MB
  connectionRate: 1000000/1m
  concurrentPerIp: 20000
  concurrentPerListener: 20000
  messagesPerUser: 10000000/1h
  messagesPerSender: 10000000/1h
  messagesPerIp: 10000000/1h
  recipientsPerUser: 10000000/1h
  recipientsPerMessage: 100
  bytesPerUser: 1000GB/1h
  auth:
${AUTH_ABOVE_W5}  brake:
    quotaHits: 3
    window: 1h
`;

/**
 * Plain: no policy folder, and the connection limits (on by default: 60/1m and 20 per IP)
 * lifted, since every bench client comes from 127.0.0.1; the AUTH lockout's counts raised
 * above W5's concurrency (AUTH_ABOVE_W5). Everything else stays default.
 */
export const PLAIN_LIMITS_YAML = `limits:
  maxMessageBytes: 60MB
  connectionRate: "off"
  concurrentPerIp: "off"
  concurrentPerListener: "off"
  auth:
${AUTH_ABOVE_W5}`;

const FILES: Record<string, string> = {
  '00-settings.yaml': `internalDomains:
  - corp.test
  - "*.corp.test"
timezone: UTC
default: accept
relayProtection: on
`,
  '10-connect.yaml': `rules:
  - name: blocked-networks
    stage: connect
    when:
      clientIp: file:lists/blocked-networks.txt
    action: reject
    reply: "554 5.7.1 Your network is not allowed to use this service"

  - name: per-ip-connections
    stage: connect
    action: limit
    rate: 1000000/1m
    per: ip
`,
  '20-submission.yaml': `rules:
  - name: sender-binding
    type: sender_binding

  - name: interns-internal-only
    type: recipient_domains
    when:
      group: interns
    allow:
      - partner.test
    reply: "550 5.7.1 Interns may only write to corp.test and partner.test"

  - name: max-recipients
    type: max_recipients
    max: 100

  - name: tag-bulk
    stage: mail
    when:
      group: marketing
    action: add_header
    header: "X-Corp-Class: bulk"

  - name: per-user-hourly
    stage: mail
    when:
      authenticated: true
    action: limit
    rate: 1000000/1h
    per: user

  - name: per-sender-hourly
    stage: mail
    action: limit
    rate: 1000000/1h
    per: sender
`,
  '30-data.yaml': `rules:
  - name: max-size-interns
    type: max_size
    when:
      group: interns
    max: 5MB

  - name: max-size
    type: max_size
    max: 60MB

  - name: unscannable
    stage: data
    when:
      scanIncomplete: true
    action: reject
    reply: "550 5.7.1 Message structure too complex to check"

  - name: blocked-attachments
    stage: data
    when:
      attachmentName: file:lists/blocked-extensions.txt
    action: reject
    reply: "550 5.7.1 Executable attachments are not accepted"

  - name: blocked-attachment-types
    stage: data
    when:
      attachmentType:
        - application/x-msdownload
        - application/x-dosexec
        - application/x-msdos-program
    action: reject
    reply: "550 5.7.1 Executable attachments are not accepted"

  - name: phpmailer-audit
    stage: data
    mode: audit
    when:
      header:
        X-Mailer: "^PHPMailer"
    action: reject
    reply: "550 5.7.1 Mail from web scripts must go through the web mail relay"
`,
  'lists/blocked-networks.txt': `192.0.2.0/24
198.51.100.0/24
203.0.113.0/24
2001:db8:dead::/48
`,
  'lists/blocked-extensions.txt': `*.exe
*.scr
*.bat
*.cmd
*.js
*.vbs
*.jar
*.msi
*.iso
*.img
`,
};

/** Sender binding for the W5 users (BENCH_USERS), plus a few others so the map is not trivially small. */
const ATTRIBUTES = `${BENCH_USERS.map(({ name }) => `${name}:\n  addresses: [sender@corp.test]\n  groups: [staff]\n`).join('')}intern1:
  addresses: [intern1@corp.test]
  groups: [interns]
mkt1:
  addresses: ["*@news.corp.test"]
  groups: [marketing, staff]
`;

/** Rules in the files above; smtpgate adds the built-in relay protection rule. */
export const POLICY_RULE_COUNT = 14;

/** Writes `policies/` and `attributes.yaml` into `dir`; returns their paths. */
export async function writePolicyFiles(dir: string): Promise<{ policies: string; attributes: string }> {
  const policies = path.join(dir, 'policies');
  await mkdir(path.join(policies, 'lists'), { recursive: true });
  for (const [name, text] of Object.entries(FILES)) await writeFile(path.join(policies, name), text);
  const attributes = path.join(dir, 'attributes.yaml');
  await writeFile(attributes, ATTRIBUTES);
  return { policies, attributes };
}
