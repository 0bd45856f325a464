/**
 * Where a CLI command reaches the running smtpgate: its admin HTTP address (metrics.address; a
 * wildcard bind is reached on loopback) and the bearer token from metrics.adminTokenFile.
 */
import { readAdminToken } from '../app.js';
import type { Config } from '../config/schema.js';

export async function adminEndpoint(config: Config): Promise<{ base: string; token: string | undefined }> {
  const { host, port } = config.metrics.address;
  const h = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  const token = config.metrics.adminTokenFile ? await readAdminToken(config.metrics.adminTokenFile) : undefined;
  return { base: `http://${h.includes(':') ? `[${h}]` : h}:${port}`, token };
}
