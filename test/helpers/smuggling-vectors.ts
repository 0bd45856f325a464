/**
 * The SMTP smuggling vectors of test/fixtures/smuggling-vectors.txt, and the DATA payloads its
 * header describes: a first message's body, the vector, then a whole second transaction that a
 * lenient backend would take for real commands.
 */
import { readFileSync } from 'node:fs';

/** Decodes the fixture's C-style escapes (\r \n \t \0 \\ \xHH). */
export function decodeCEscapes(line: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < line.length; i++) {
    const c = line.charAt(i);
    if (c !== '\\') {
      out.push(line.charCodeAt(i));
      continue;
    }
    const e = line.charAt(++i);
    if (e === 'r') out.push(0x0d);
    else if (e === 'n') out.push(0x0a);
    else if (e === 't') out.push(0x09);
    else if (e === '0') out.push(0x00);
    else if (e === '\\') out.push(0x5c);
    else if (e === 'x') {
      const hex = line.slice(i + 1, i + 3);
      if (!/^[0-9a-fA-F]{2}$/.test(hex)) throw new Error(`bad \\x escape in vector: ${line}`);
      out.push(parseInt(hex, 16));
      i += 2;
    } else throw new Error(`unknown escape \\${e} in vector: ${line}`);
  }
  return Buffer.from(out);
}

export function loadSmugglingVectors(): Buffer[] {
  const text = readFileSync(new URL('../fixtures/smuggling-vectors.txt', import.meta.url), 'utf8');
  return text
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.trim() !== '' && !l.startsWith('#'))
    .map(decodeCEscapes);
}

/** The smuggled transaction, up to the final "." that the fixture's header ends it with. */
export const SMUGGLED_TRANSACTION = 'MAIL FROM:<spoof@corp.test>\r\nRCPT TO:<victim@corp.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n';

/**
 * First-message bodies: ending mid-line (the vector supplies the line end, as in SEC Consult's
 * payloads) or with a CRLF of its own.
 */
const BODIES = ['From: alice@corp.test\r\nSubject: hello\r\n\r\nfirst message', 'Subject: hello\r\n\r\nfirst message\r\n'];
/** The header writes "VECTOR MAIL FROM"; the literal space and no space (the realistic attack). */
const SEPARATORS = ['', ' '];

export interface SmugglingCase {
  readonly name: string;
  readonly vector: Buffer;
  /** Everything the client writes after DATA's 354, the terminating "\r\n.\r\n" included. */
  readonly payload: Buffer;
}

export function smugglingCases(): SmugglingCase[] {
  return loadSmugglingVectors().flatMap((vector) =>
    BODIES.flatMap((body, bi) =>
      SEPARATORS.map((sep) => ({
        name: `${JSON.stringify(vector.toString('latin1'))} body#${bi}${sep === '' ? '' : ' +space'}`,
        vector,
        payload: Buffer.concat([Buffer.from(body, 'latin1'), vector, Buffer.from(sep + SMUGGLED_TRANSACTION + '.\r\n', 'latin1')]),
      })),
    ),
  );
}
