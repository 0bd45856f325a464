/**
 * Text a client chose (a login, a HELO name) made safe for a log line: printable ASCII only,
 * at most 128 characters. A control character could end the line early or start a forged one in
 * a log read as text; JSON escapes them, but the journal, syslog and terminals don't all read JSON.
 */
export function printable(value: string): string;
export function printable(value: string | undefined): string | undefined;
export function printable(value: string | undefined): string | undefined {
  return value === undefined ? undefined : value.replace(/[^\x20-\x7e]/g, '?').slice(0, 128);
}
