/**
 * The physical limit: the load generator straight into smtp-sink, no proxy in between.
 */
import type { Peer, PeerContext, RunningPeer, Unavailable } from './peer.js';

export class DirectPeer implements Peer {
  readonly id = 'direct' as const;
  readonly description = 'smtp-source straight into smtp-sink (no proxy); memory figures are smtp-sink\'s';

  prepare(): Promise<Unavailable | undefined> {
    return Promise.resolve(undefined);
  }

  start(ctx: PeerContext): Promise<RunningPeer> {
    return Promise.resolve({ pid: ctx.sinkPid, port: ctx.sinkPort, stop: () => Promise.resolve() });
  }
}
