/**
 * A real DKIM verifier for the tests: dkimpy (Debian python3-dkim), through a few lines of
 * Python that serve the test's TXT records instead of asking DNS. Use with
 * describeWith(['dkimverify'], …): dkimverify is dkimpy's own command, and its #! line names
 * the Python that has the dkim module.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { findProgram } from './programs.js';

const SCRIPT = `
import json, sys, dkim
records = json.loads(sys.argv[1])
def dnsfunc(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    v = records.get(n.rstrip('.').lower())
    return v.encode() if v is not None else None
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
sigs = [h for h in d.headers if h[0].lower() == b'dkim-signature']
results = []
for i in range(len(sigs)):
    try:
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
    except Exception as e:
        ok = False
    results.append({'ok': bool(ok), 'signature': sigs[i][1].decode('latin1')})
print(json.dumps(results))
`;

export interface Verification {
  readonly ok: boolean;
  /** The DKIM-Signature field's value. */
  readonly signature: string;
}

/** The Python that runs dkimverify (from its #! line). */
function python(): string {
  const verify = findProgram('dkimverify');
  if (!verify) throw new Error('dkimverify (apt-get install python3-dkim) is missing');
  const shebang = /^#!\s*(\S+)/.exec(readFileSync(verify, 'utf8'))?.[1];
  return shebang ?? 'python3';
}

/**
 * Verifies every DKIM-Signature of `message` with dkimpy; `records` maps a TXT record name
 * (SELECTOR._domainkey.DOMAIN) to its text ("v=DKIM1; k=rsa; p=…").
 */
export function verifyDkim(message: Buffer, records: Record<string, string>): Promise<Verification[]> {
  return new Promise((resolve, reject) => {
    const child = execFile(python(), ['-c', SCRIPT, JSON.stringify(records)], { maxBuffer: 1 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`dkimpy failed: ${err.message}\n${stderr}`));
      resolve(JSON.parse(stdout) as Verification[]);
    });
    child.stdin!.end(message);
  });
}

/** The TXT record of a `smtpgate dkim keygen` zone line: its name, and its strings joined. */
export function parseZoneLine(line: string): { name: string; value: string } {
  const m = /^(\S+?)\.? IN TXT ((?:"[^"]*"\s*)+)$/.exec(line.trim());
  if (!m) throw new Error(`not a TXT zone line: ${line}`);
  const value = [...m[2]!.matchAll(/"([^"]*)"/g)].map((x) => x[1]).join('');
  return { name: m[1]!.toLowerCase(), value };
}
