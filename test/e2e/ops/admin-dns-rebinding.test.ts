/**
 * DNS rebinding against the admin routes without a token (issue 14 item 6). A page served from
 * http://rebound.example:9464 whose name the attacker then points at 127.0.0.1 reads
 * GET /limits as a same-origin request. Over plain HTTP to a name that is no loopback literal,
 * the browser sends neither Origin (a same-origin GET) nor Sec-Fetch-Site (Fetch Metadata is
 * sent only to potentially trustworthy URLs: WPT fetch/metadata "Not sent to non-trustworthy
 * same-origin destination"), so the browser guard sees nothing. What such a request does carry
 * is the attacker's name in Host: without a token, the routes answer only a Host that is an IP
 * address or "localhost", which no rebound page can send. With a token the page has no way
 * to send the token, so any Host is fine (a Service name in Kubernetes).
 */
import http from 'node:http';
import { describe, expect, test } from 'vitest';
import type { Gate } from '../../helpers/gate.js';
import { ADMIN_TOKEN, adminGatesForFile } from '../../helpers/admin-gates.js';

const gates = adminGatesForFile();

/** A request to the gate's admin address with exactly these headers (fetch would set Host itself). */
function request(g: Gate, method: string, route: string, headers: Record<string, string>, body?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: g.metricsPort, method, path: route, headers, setHost: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const REBOUND_HOSTS = ['rebound.example:9464', 'rebound.example', 'REBOUND.example.:9464', 'localhost.rebound.example', '127.0.0.1.rebound.example:9464'];

describe('without a token, a Host that is neither an IP address nor localhost is refused with 403', () => {
  test.each(REBOUND_HOSTS)('GET /limits with Host %s', async (host) => {
    const res = await request(gates.open, 'GET', '/limits', { host });
    expect(res.status).toBe(403);
    expect(res.body).toMatch(/Host/);
  });

  test.each(REBOUND_HOSTS)('POST /limits/clear with Host %s', async (host) => {
    const res = await request(gates.open, 'POST', '/limits/clear', { host, 'content-type': 'application/json' }, JSON.stringify({ target: '192.0.2.7' }));
    expect(res.status).toBe(403);
  });

  test('a missing Host never gets the state (node answers 400 before the route, the route 403)', async () => {
    expect([400, 403]).toContain((await request(gates.open, 'GET', '/limits', {})).status);
  });

  test('the refusal is logged', async () => {
    const before = gates.open.logs.length;
    await request(gates.open, 'GET', '/limits', { host: 'rebound.example:9464' });
    expect(gates.open.logs.slice(before).find((l) => l.msg === 'admin request refused')).toMatchObject({ status: 403, path: '/limits' });
  });
});

describe('the addresses an admin types still work', () => {
  test.each(['127.0.0.1:9464', '127.0.0.1', 'localhost:9464', 'LOCALHOST', '[::1]:9464', '[::1]', '192.0.2.10:9464'])('GET /limits with Host %s', async (host) => {
    expect((await request(gates.open, 'GET', '/limits', { host })).status).toBe(200);
  });

  test('with a token, any Host (the page could not send the token)', async () => {
    expect((await request(gates.withToken, 'GET', '/limits', { host: 'smtpgate-admin.mail.svc:9464', authorization: `Bearer ${ADMIN_TOKEN}` })).status).toBe(200);
    expect((await request(gates.withToken, 'GET', '/limits', { host: 'rebound.example:9464' })).status).toBe(401);
  });

  test('/metrics and the probes do not look at Host', async () => {
    expect((await request(gates.open, 'GET', '/metrics', { host: 'prometheus-target.example:9464' })).status).toBe(200);
    expect((await request(gates.open, 'GET', '/healthz', { host: 'kubelet.example' })).status).toBe(200);
  });
});
