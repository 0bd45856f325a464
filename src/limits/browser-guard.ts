/**
 * The admin routes (/limits, /limits/clear) serve programs: `smtpgate limits` and curl. A
 * browser has no business there, and when it shows up it is a page acting with the admin's
 * network position, not the admin:
 *
 * - CSRF: a page on any site can POST to http://127.0.0.1:9464/limits/clear. A "simple
 *   request" (text/plain, a form encoding, no content type) skips the CORS preflight, so the
 *   browser sends it and the server acts, even though the page never sees the answer.
 * - DNS rebinding: a page whose name is re-pointed at 127.0.0.1 is "same origin" with the
 *   admin address and can read GET /limits. Comparing Origin with Host doesn't help, since
 *   both carry the attacker's name.
 *
 * So a request that shows a browser's marks is refused whatever it names: an Origin header
 * (browsers send it on every POST and every cross-origin request; the CLI, curl and node's
 * fetch never do), or a Sec-Fetch-Site other than "none" (a page made the request, not the
 * user typing the URL). A body must be declared application/json, which no simple request can
 * be. Pure: headers in, refusal out.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { isIP } from 'node:net';

export interface HttpRefusal {
  readonly status: 401 | 403 | 415;
  readonly error: string;
}

export function refuseBrowserRequest(req: { readonly method?: string; readonly headers: IncomingHttpHeaders }): HttpRefusal | undefined {
  const site = req.headers['sec-fetch-site'];
  if (req.headers.origin !== undefined || (site !== undefined && site !== 'none')) {
    return { status: 403, error: 'the admin routes do not answer requests made by a browser page (Origin or Sec-Fetch-Site present); use smtpgate limits or curl' };
  }
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  // The media type without parameters (RFC 9110 §8.3.1: case-insensitive).
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (hasBody && type !== 'application/json') {
    return { status: 415, error: `expected Content-Type: application/json, found ${JSON.stringify(req.headers['content-type'] ?? 'none')}` };
  }
  return undefined;
}

/**
 * DNS rebinding without a token. A rebound page's same-origin GET over plain HTTP carries
 * neither mark above: no Origin (a same-origin GET), and no Sec-Fetch-Site, which browsers
 * send only to potentially trustworthy URLs (https, or a loopback literal), never to
 * http://rebound.example. Its Host header does carry the attacker's name, though, and a name
 * is all DNS rebinding can give it: an IP address or "localhost" in Host can't be rebound.
 * Only for the routes without a token: with one, the page has no way to send it.
 */
export function refuseRebindingHost(host: string | undefined): HttpRefusal | undefined {
  // RFC 9110 §7.2: uri-host [ ":" port ]; an IPv6 literal in brackets.
  const name = /^\[([^\]]*)\](?::\d*)?$/.exec(host ?? '')?.[1] ?? (host ?? '').replace(/:\d*$/, '');
  if (isIP(name) || name.toLowerCase() === 'localhost') return undefined;
  return {
    status: 403,
    error: `the admin routes without a token answer only a Host that is an IP address or localhost, not ${JSON.stringify(host ?? 'none')} (DNS rebinding); use http://127.0.0.1:PORT, or set metrics.adminTokenFile`,
  };
}

/**
 * Every admin route's gate, in order: a browser's marks (CSRF), a rebindable Host when there is
 * no token (DNS rebinding), then the bearer token when one is set. Undefined: go on.
 */
export function refuseAdminRequest(req: { readonly method?: string; readonly headers: IncomingHttpHeaders }, token: string | undefined): HttpRefusal | undefined {
  const refused = refuseBrowserRequest(req) ?? (token ? undefined : refuseRebindingHost(req.headers.host));
  if (refused) return refused;
  if (token && !sameSecret(req.headers.authorization, `Bearer ${token}`)) return { status: 401, error: 'missing or wrong bearer token' };
  return undefined;
}

/** Compares digests in constant time, so the answer's timing says nothing about how much of the token matched. */
function sameSecret(given: string | undefined, expected: string): boolean {
  const digest = (text: string) => createHash('sha256').update(text).digest();
  return given !== undefined && timingSafeEqual(digest(given), digest(expected));
}

/**
 * The JSON body of an admin POST, at most 4 KiB (a longer one drops the connection): `onBody`
 * gets the parsed value, or undefined when the body is empty, or `onBad` runs when it is not JSON.
 */
export function readAdminBody(req: IncomingMessage, onBody: (value: unknown) => void, onBad: () => void): void {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (c: string) => {
    body += c;
    if (body.length > 4096) req.destroy();
  });
  req.on('end', () => {
    let value: unknown;
    try {
      value = body.trim() ? JSON.parse(body) : undefined;
    } catch {
      return onBad();
    }
    onBody(value);
  });
}
