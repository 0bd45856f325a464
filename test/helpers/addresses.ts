/** Addresses of exact lengths, for the RFC 5321 §4.5.3.1 size limits. */

/** A DNS name of exactly `n` octets: `first` (e.g. "xn--bcher-kva."), then labels of up to 63 octets, ending in ".test". */
export function domainOfLength(n: number, first = ''): string {
  let d = 'test';
  for (let i = 0; d.length < n - first.length; i++) d = String.fromCharCode(97 + (i % 26)).repeat(Math.min(63, n - first.length - d.length - 1)) + '.' + d;
  if (first.length + d.length !== n) throw new Error(`no domain of ${n} octets`);
  return first + d;
}
