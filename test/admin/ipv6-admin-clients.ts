// Run by admin-ipv6-network.test.ts inside its network namespace: the admin listener on fd00:1::1 with a
// cap of 2 connections per client; two held open from fd00:1::2, then curl asks /healthz from fd00:1::3
// (the same /64: over the cap, so the older held one is closed for it) and from fd00:2::1 (another: none is).
// Prints one JSON line of what each got and how many held connections each closed.
import net from 'node:net';
import { once } from 'node:events';
import { execFile } from 'node:child_process';
import { startAdminServer } from '../../engine/admin/admin-server.ts';

function connect(port: number, localAddress: string): Promise<net.Socket> {
  const socket = net.connect({ host: 'fd00:1::1', port, localAddress, family: 6 });
  socket.on('error', () => undefined);
  return once(socket, 'connect').then(() => socket);
}

/** curl from `localAddress`: the body it got, or how it failed (exit 52 or 56: closed without a reply). */
function curl(port: number, localAddress: string): Promise<string> {
  return new Promise((resolve) => {
    execFile('curl', ['-s', '--max-time', '30', '--interface', localAddress, `http://[fd00:1::1]:${port}/healthz`], (err, stdout) => {
      const code = (err as { code?: number } | null)?.code;
      resolve(err ? (code === 52 || code === 56 ? 'closed unanswered' : `curl exit ${code}`) : stdout.trim());
    });
  });
}

const madeRoom: string[] = [];
const admin = await startAdminServer('[fd00:1::1]:0', { readiness: async () => ({}), status: async () => ({}) },
  { maxConnectionsPerIp: 2, ipv6PrefixLength: 64, madeRoom: (client) => madeRoom.push(client) });
try {
  const port = admin.address.port;
  let result: Record<string, unknown> | null = null;
  // The held connections have 10 s to send a request (headersTimeout): should they be cut before the probes ran, again.
  for (let attempt = 0; attempt < 5 && !result; attempt++) {
    const held = [await connect(port, 'fd00:1::2'), await connect(port, 'fd00:1::2')];
    const closedOnes: number[] = [];
    held.forEach((h, i) => h.once('close', () => closedOnes.push(i)));
    const sameNetwork = await curl(port, 'fd00:1::3');
    for (let i = 0; i < 500 && closedOnes.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    const closedBySameNetwork = [...closedOnes];
    const otherNetwork = await curl(port, 'fd00:2::1');
    if (!held[1]!.destroyed && held[1]!.readyState === 'open') {
      result = { sameNetwork, closedBySameNetwork, otherNetwork, closedByOther: closedOnes.length - closedBySameNetwork.length, madeRoom: [...new Set(madeRoom)] };
    }
    for (const h of held) h.destroy();
    await Promise.all(held.map((h) => h.closed ? undefined : once(h, 'close')));
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  await admin.close();
}
process.exit(0);
