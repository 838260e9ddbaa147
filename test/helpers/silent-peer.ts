/** A next hop that takes connections and says nothing (a dead or hostile MX, a firewall that accepts and stalls). */
import net from 'node:net';

export interface SilentPeer {
  /** Connections taken so far. */
  readonly connections: number;
  close(): void;
}

/** Takes connections on `host:port` and says nothing; counts them. */
export async function startSilentPeer(host: string, port: number): Promise<SilentPeer> {
  const sockets = new Set<net.Socket>();
  const state = { connections: 0 };
  const server = net.createServer((s) => { state.connections++; sockets.add(s); s.on('error', () => undefined); s.once('close', () => sockets.delete(s)); });
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, host, resolve); });
  return { get connections() { return state.connections; }, close: () => { for (const s of sockets) s.destroy(); server.close(); } };
}
