/**
 * Two gates on one recording backend for a test file about the admin routes: `open` has no
 * admin token, `withToken` requires ADMIN_TOKEN. Started before the file's tests, stopped after.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { startGate, type Gate } from './gate.js';
import { startRecordingBackend, type RecordingBackend } from './backends.js';

export const ADMIN_TOKEN = 'a-long-enough-admin-token-0123456789';

export interface AdminGates {
  readonly open: Gate;
  readonly withToken: Gate;
}

export function adminGatesForFile(): AdminGates {
  let backend: RecordingBackend | undefined;
  let open: Gate | undefined;
  let withToken: Gate | undefined;
  beforeAll(async () => {
    backend = await startRecordingBackend();
    open = await startGate({ backendPort: backend.port });
    withToken = await startGate({
      backendPort: backend.port,
      adminTokenFile: 'admin-token',
      beforeStart: (dir) => writeFile(path.join(dir, 'admin-token'), `${ADMIN_TOKEN}\n`),
    });
  });
  afterAll(async () => {
    await open?.stop();
    await withToken?.stop();
    await backend?.close();
  });
  const started = (g: Gate | undefined): Gate => {
    if (!g) throw new Error('the admin gates start in beforeAll: use them inside a test');
    return g;
  };
  return {
    get open() {
      return started(open);
    },
    get withToken() {
      return started(withToken);
    },
  };
}
