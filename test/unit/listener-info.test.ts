/**
 * smtpgate_listener_info: one series per listener whose labels say what it enforces, read
 * from the config as the running listener applies it (the defaults filled in). The alert
 * SmtpgateEnforcementBypassed joins smtpgate_messages_total with it, so a label that said
 * less than the listener enforces would silence the alert, and one that said more would
 * raise it on mail the listener lets through.
 */
import { describe, expect, test } from 'vitest';
import { readBuildInfo } from '../../src/build-info.js';
import { parseConfig } from '../../src/config/load.js';
import { createMetrics, describeListeners, initSeries, listenerInfoLabels } from '../../src/metrics/catalogue.js';
import { configYaml, listener, openListener, type ListenerInput } from '../helpers/config.js';

/** The listeners as the config loader returns them, defaults and all. */
function loaded(...listeners: ListenerInput[]) {
  const text = configYaml({ listeners, tls: { cert: 'cert.pem', key: 'key.pem' }, auth: { users: 'users' }, backend: { address: '10.0.0.5:25' } });
  return parseConfig(text, '/etc/smtpgate/smtpgate.yaml').listeners;
}

describe('listenerInfoLabels', () => {
  test('a listener left to the defaults requires STARTTLS and AUTH, trusts no network and asks for no certificate', () => {
    const [l] = loaded(listener('submission'));
    expect(listenerInfoLabels(l!)).toEqual({
      listener: 'submission',
      tls_mode: 'starttls',
      require_tls: 'true',
      require_auth: 'true',
      trusted_networks: 'false',
      trusted_require_tls: 'true',
      client_certs: 'none',
    });
  });

  test('trusted networks without their own requireTls must use TLS as the listener says', () => {
    const [l] = loaded(listener('submission', { trusted: { networks: ['10.0.0.0/8'] } }));
    expect(listenerInfoLabels(l!)).toMatchObject({ require_tls: 'true', trusted_networks: 'true', trusted_require_tls: 'true' });
  });

  test('trusted.requireTls: false lets trusted clients send in cleartext where others need TLS', () => {
    const [l] = loaded(listener('submission', { trusted: { networks: ['10.0.0.0/8'], requireTls: false } }));
    expect(listenerInfoLabels(l!)).toMatchObject({ require_tls: 'true', require_auth: 'true', trusted_networks: 'true', trusted_require_tls: 'false' });
  });

  test('a plaintext listener for internal apps requires neither', () => {
    const [l] = loaded(openListener());
    expect(listenerInfoLabels(l!)).toEqual({
      listener: 'open',
      tls_mode: 'none',
      require_tls: 'false',
      require_auth: 'false',
      trusted_networks: 'true',
      trusted_require_tls: 'false',
      client_certs: 'none',
    });
  });

  test('client certificates: optional, or required', () => {
    const [optional, required] = loaded(
      listener('smtps', { tls: 'implicit', clientCerts: { ca: 'ca.pem' } }),
      listener('mtls', { tls: 'implicit', clientCerts: { ca: 'ca.pem', required: true } }),
    );
    expect(listenerInfoLabels(optional!)).toMatchObject({ tls_mode: 'implicit', client_certs: 'optional' });
    expect(listenerInfoLabels(required!)).toMatchObject({ tls_mode: 'implicit', client_certs: 'required' });
  });
});

describe('the series a start creates', () => {
  test('smtpgate_listener_info is 1 once per listener, and describing the listeners again replaces them', async () => {
    const m = createMetrics(readBuildInfo());
    describeListeners(m, loaded(listener('submission'), listener('smtps', { tls: 'implicit' })));
    describeListeners(m, loaded(listener('submission')));
    const series = (await m.listenerInfo.get()).values;
    expect(series.map((s) => [s.labels.listener, s.value])).toEqual([['submission', 1]]);
  });

  test('every result × auth × tls of smtpgate_messages_total starts at 0, those the listener refuses too', async () => {
    const m = createMetrics(readBuildInfo());
    initSeries(m, { listeners: ['submission'], backends: [], loadedAt: new Date() });
    const series = (await m.messages.get()).values;
    expect(series).toHaveLength(3 * 3 * 2);
    expect(series.every((s) => s.value === 0)).toBe(true);
    // What SmtpgateEnforcementBypassed looks for on a listener requiring TLS and AUTH.
    expect(series.map((s) => s.labels)).toContainEqual({ listener: 'submission', result: 'relayed', auth: 'none', tls: 'no' });
  });
});
