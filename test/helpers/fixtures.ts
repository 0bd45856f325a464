/**
 * The one fixture style for e2e tests: vitest's `test.extend` with a `backend` (a recording
 * smtp-server) and a `gate` (a real smtpgate in front of it). Both are file-scoped: the first
 * test that asks for one starts it, every later test in the file shares it, and vitest stops
 * them after the file's last test, the gate before the backend it depends on. A file (or a
 * `describe`) says how they are configured with `gateTest.override('gateOptions', ...)` /
 * `override('backendOptions', ...)`; a test that needs its own gate or backend starts it and
 * registers its release with `onTestFinished`.
 */
import { test } from 'vitest';
import { startGate, type Gate, type StartGateOptions } from './gate.js';
import { startRecordingBackend, type RecordingBackend, type RecordingBackendOptions } from './backends.js';

export type GateFixtureOptions = Omit<StartGateOptions, 'backendPort'>;

export const gateTest = test
  .extend('backendOptions', { scope: 'file' }, {} as RecordingBackendOptions)
  .extend('backend', { scope: 'file' }, async ({ backendOptions }, { onCleanup }): Promise<RecordingBackend> => {
    const backend = await startRecordingBackend(backendOptions);
    onCleanup(() => backend.close());
    return backend;
  })
  .extend('gateOptions', { scope: 'file' }, {} as GateFixtureOptions)
  .extend('gate', { scope: 'file' }, async ({ backend, gateOptions }, { onCleanup }): Promise<Gate> => {
    const gate = await startGate({ backendPort: backend.port, ...gateOptions });
    onCleanup(() => gate.stop());
    return gate;
  });
