/**
 * A backend that doesn't advertise the identity command (XCLIENT by default) gets mail with no
 * identity and judges smtpgate's address instead of the client's (issue 14, item 10). Each
 * health check reads the backend's EHLO: smtpgate_backend_identity_advertised says what it saw,
 * /readyz answers 503 with the reason (unless backend.requireIdentity is false), and the
 * warning is logged once per change, not at every check.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { expect, onTestFinished, test } from 'vitest';
import { metricValue, startGate, type Gate } from '../../helpers/gate.js';
import type { BackendInput } from '../../helpers/config.js';
import { startPostfix } from '../../helpers/postfix.js';
import { describeWith, findProgram } from '../../helpers/programs.js';
import { authenticatedSession, deadPort, envelope, eventually } from '../../helpers/sessions.js';

async function readyz(gate: Gate): Promise<{ status: number; reasons: string[] }> {
  const res = await fetch(`http://127.0.0.1:${gate.metricsPort}/readyz`);
  return { status: res.status, reasons: ((await res.json()) as { reasons: string[] }).reasons };
}

/** Health checks every 200 ms against one backend on 127.0.0.1:`port`. */
async function gateFor(port: number, extra: Partial<BackendInput> = {}): Promise<Gate> {
  const gate = await startGate({ backend: { address: `127.0.0.1:${port}`, healthCheckInterval: '200ms', ...extra } });
  onTestFinished(() => gate.stop());
  return gate;
}

const identityWarnings = (gate: Gate, command: string) => gate.logs.filter((l) => l.level === 'warn' && l.msg === `does not advertise ${command} (backend.identity), so it judges smtpgate's address instead of the client's: on Postfix add smtpgate's address to smtpd_authorized_${command.toLowerCase()}_hosts, or set backend.requireIdentity: false to stay ready without it`);

/**
 * Postfix's smtp-sink with XCLIENT and XFORWARD turned off (-C -F): an EHLO like a legacy
 * server's that knows neither (Exchange, an appliance). As root it must be told whom to run as.
 */
async function startSmtpSink(): Promise<number> {
  const port = await deadPort();
  const child: ChildProcess = spawn(findProgram('smtp-sink')!, ['-C', '-F', ...(process.getuid?.() === 0 ? ['-u', 'nobody'] : []), `127.0.0.1:${port}`, '10'], { stdio: 'ignore' });
  onTestFinished(async () => {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  });
  await eventually(
    () =>
      new Promise<boolean>((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      }),
    'smtp-sink to listen',
  );
  return port;
}

describeWith(['smtp-sink'], 'a backend without XCLIENT (smtp-sink -C -F)', () => {
  test('/readyz answers 503 naming the backend and the fix, the metric is 0, the warning is logged once, and mail still flows', async () => {
    const port = await startSmtpSink();
    const gate = await gateFor(port);
    const backend = `127.0.0.1:${port}`;
    // The first round of checks runs before start() returns.
    expect(await metricValue(gate, 'smtpgate_backend_identity_advertised', { backend })).toBe(0);
    expect(await metricValue(gate, 'smtpgate_backend_up', { backend })).toBe(1);
    const ready = await readyz(gate);
    expect(ready.status).toBe(503);
    expect(ready.reasons).toEqual([
      `backend ${backend} does not advertise XCLIENT (backend.identity), so it judges smtpgate's address instead of the client's: on Postfix add smtpgate's address to smtpd_authorized_xclient_hosts, or set backend.requireIdentity: false to stay ready without it`,
    ]);
    // Not ready is not closed: a client already sent here is still served.
    const c = await authenticatedSession(gate);
    const { mail, data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(mail.code).toBe(250);
    expect(data?.code).toBe(354);
    expect((await c.cmd('Subject: t\r\n\r\nhi\r\n.')).code).toBe(250);
    expect(identityWarnings(gate, 'XCLIENT')).toHaveLength(1);
    expect(identityWarnings(gate, 'XCLIENT')[0]).toMatchObject({ backend });
  });

  test('with backend.requireIdentity: false, /readyz stays 200 while the metric and the warning still say it', async () => {
    const port = await startSmtpSink();
    const gate = await gateFor(port, { requireIdentity: false });
    expect(await readyz(gate)).toEqual({ status: 200, reasons: [] });
    expect(await metricValue(gate, 'smtpgate_backend_identity_advertised', { backend: `127.0.0.1:${port}` })).toBe(0);
    expect(identityWarnings(gate, 'XCLIENT')).toHaveLength(1);
  });

  test('with backend.identity: none nothing is checked: no metric, ready', async () => {
    const port = await startSmtpSink();
    const gate = await gateFor(port, { identity: 'none' });
    expect(await readyz(gate)).toEqual({ status: 200, reasons: [] });
    const text = await (await fetch(`http://127.0.0.1:${gate.metricsPort}/metrics`)).text();
    expect(text).not.toMatch(/^smtpgate_backend_identity_advertised\{/m);
  });
});

describeWith(['postfix'], 'a real Postfix as the backend', () => {
  test('that authorizes smtpgate for XCLIENT: the metric is 1 and /readyz 200', async () => {
    const postfix = await startPostfix();
    onTestFinished(() => postfix.stop());
    const gate = await gateFor(postfix.port);
    expect(await metricValue(gate, 'smtpgate_backend_identity_advertised', { backend: `127.0.0.1:${postfix.port}` })).toBe(1);
    expect(await readyz(gate)).toEqual({ status: 200, reasons: [] });
    expect(identityWarnings(gate, 'XCLIENT')).toHaveLength(0);
    expect(gate.logs.some((l) => l.msg === 'backend advertises XCLIENT')).toBe(true);
  });

  test("that doesn't authorize smtpgate (empty smtpd_authorized_xclient_hosts): Postfix hides XCLIENT, /readyz 503", async () => {
    // The later line wins in main.cf.
    const postfix = await startPostfix({ mainCf: 'smtpd_authorized_xclient_hosts =' });
    onTestFinished(() => postfix.stop());
    const gate = await gateFor(postfix.port);
    expect(await metricValue(gate, 'smtpgate_backend_identity_advertised', { backend: `127.0.0.1:${postfix.port}` })).toBe(0);
    const ready = await readyz(gate);
    expect(ready.status).toBe(503);
    expect(ready.reasons[0]).toContain(`backend 127.0.0.1:${postfix.port} does not advertise XCLIENT`);
  });

  test('with identity: xforward and no smtpd_authorized_xforward_hosts: 503 naming XFORWARD and its Postfix setting', async () => {
    const postfix = await startPostfix();
    onTestFinished(() => postfix.stop());
    const gate = await gateFor(postfix.port, { identity: 'xforward' });
    const ready = await readyz(gate);
    expect(ready.status).toBe(503);
    expect(ready.reasons[0]).toContain('does not advertise XFORWARD');
    expect(identityWarnings(gate, 'XFORWARD')).toHaveLength(1);
  });
});
