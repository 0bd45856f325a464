/**
 * Which configured addresses can't all be bound at once. Pure: (addresses) → conflicts, so
 * `check` catches what would otherwise be an EADDRINUSE halfway through `run`'s start.
 *
 * The rules are Linux's, with node's defaults (verified on this machine): "::" is dual-stack,
 * so it takes the port on every IPv6 and every IPv4 address; "0.0.0.0" takes it on every IPv4
 * address (but not on ::1); "::ffff:a.b.c.d" is the IPv4 address a.b.c.d; two different
 * specific addresses share a port fine. Port 0 picks a free port and never conflicts. A host
 * name is compared by its spelling only: what it resolves to is not known here.
 */
import net from 'node:net';

export interface Bind {
  /** "listener \"mx\"" or "metrics.address": how the message names it. */
  readonly label: string;
  /** Config path segments of the address, for the line. */
  readonly segments: readonly PropertyKey[];
  readonly host: string;
  readonly port: number;
}

export interface BindConflict {
  /** The later of the two, where the issue is reported. */
  readonly bind: Bind;
  readonly other: Bind;
  readonly why: string;
}

type Claim = { kind: 'any' } | { kind: 'any4' } | { kind: 'ip'; family: 4 | 6; address: string } | { kind: 'name'; name: string };

function claimOf(host: string): Claim {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(host);
  if (mapped) return claimOf(mapped[1]!);
  const family = net.isIP(host);
  if (family === 4) return host === '0.0.0.0' ? { kind: 'any4' } : { kind: 'ip', family: 4, address: host };
  if (family === 6) {
    // The URL parser writes an IPv6 address in one canonical form, an IPv4-mapped one in hex.
    const address = new URL(`http://[${host}]/`).hostname.slice(1, -1);
    const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(address);
    if (hex) {
      const [hi, lo] = [parseInt(hex[1]!, 16), parseInt(hex[2]!, 16)];
      return claimOf(`${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`);
    }
    return address === '::' ? { kind: 'any' } : { kind: 'ip', family: 6, address };
  }
  return { kind: 'name', name: host.toLowerCase() };
}

function clash(a: Claim, b: Claim): string | undefined {
  if (a.kind === 'name' || b.kind === 'name') return a.kind === 'name' && b.kind === 'name' && a.name === b.name ? 'the same address' : undefined;
  if (a.kind === 'any' || b.kind === 'any') return ':: takes the port on every IPv6 and IPv4 address';
  if (a.kind === 'any4' || b.kind === 'any4') {
    const other = a.kind === 'any4' ? b : a;
    return other.kind === 'any4' || other.family === 4 ? '0.0.0.0 takes the port on every IPv4 address' : undefined;
  }
  return a.family === b.family && a.address === b.address ? 'the same address' : undefined;
}

export function findBindConflicts(binds: readonly Bind[]): BindConflict[] {
  const out: BindConflict[] = [];
  binds.forEach((bind, i) => {
    if (bind.port === 0) return;
    for (const other of binds.slice(0, i)) {
      if (other.port !== bind.port) continue;
      const why = clash(claimOf(bind.host), claimOf(other.host));
      if (why) {
        out.push({ bind, other, why });
        return;
      }
    }
  });
  return out;
}

export function describeBind(b: Bind): string {
  return `${b.label} (${b.host.includes(':') ? `[${b.host}]` : b.host}:${b.port})`;
}
