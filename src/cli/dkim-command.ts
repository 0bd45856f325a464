/**
 * `smtpgate dkim keygen DOMAIN SELECTOR [--bits 2048] [--out FILE]`: writes a new RSA key
 * (mode 0600, never over an existing file) and prints the DNS TXT record that publishes it.
 */
import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { domainToASCII } from 'node:url';
import { DEFAULT_KEY_BITS, MAX_KEY_BITS, MIN_KEY_BITS, dnsRecord, generateDkimKey } from '../dkim/keygen.js';

interface KeygenOptions {
  bits: string;
  out?: string;
}

export function registerDkimCommand(program: Command): void {
  const dkim = program.command('dkim').description('DKIM signing keys (README "DKIM signing")');
  dkim
    .command('keygen <domain> <selector>')
    .description('write a new RSA signing key (mode 0600) and print the DNS TXT record to publish')
    .option('--bits <n>', `key size in bits (${MIN_KEY_BITS}-${MAX_KEY_BITS})`, String(DEFAULT_KEY_BITS))
    .option('--out <file>', 'where to write the key (default: SELECTOR.DOMAIN.key here); an existing file is never overwritten')
    .action(async (domainArg: string, selector: string, opts: KeygenOptions) => {
      try {
        const domain = domainToASCII(domainArg.replace(/\.$/, ''));
        if (!domain || !domain.includes('.')) throw new Error(`${JSON.stringify(domainArg)} is not a domain such as example.com`);
        if (!/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(selector)) throw new Error(`${JSON.stringify(selector)} is not a selector (letters, digits, "-", dots between labels)`);
        const bits = Number(opts.bits);
        if (!Number.isInteger(bits) || bits < MIN_KEY_BITS || bits > MAX_KEY_BITS) throw new Error(`--bits must be a whole number from ${MIN_KEY_BITS} to ${MAX_KEY_BITS}, found ${opts.bits}`);
        const out = opts.out ?? `${selector}.${domain}.key`;
        const key = await generateDkimKey(bits);
        try {
          await writeFile(out, key.privatePem, { mode: 0o600, flag: 'wx' });
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          throw new Error(code === 'EEXIST' ? `${out} exists already; keygen never overwrites a key (choose another --out, or a new selector)` : `cannot write ${out}: ${(err as Error).message}`);
        }
        const record = dnsRecord(domain, selector, key.publicKey);
        process.stderr.write(`wrote a ${bits}-bit RSA key to ${out} (mode 0600). Publish this TXT record, then add to the config:\n  dkim:\n    domains:\n      - { domain: ${domain}, selector: ${selector}, key: ${out} }\n`);
        process.stdout.write(record.zoneLine + '\n');
      } catch (err) {
        process.stderr.write(`smtpgate: ${(err as Error).message}\n`);
        process.exitCode = 1;
      }
    });
}
