// Run by account-page-ipv6-network.test.ts inside its network namespace: the account page on fd00:1::1
// with a cap of 2 connections per client; two held from fd00:1::2, then a TLS handshake tried from
// fd00:1::3 (the same /64: over the cap, so the older held one is closed for it) and from fd00:2::1
// (another: none is). Prints one JSON line of what each got and which held ones each closed.
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAccounts } from './helpers.ts';

function connect(port: number, localAddress: string): Promise<net.Socket> {
  const socket = net.connect({ host: 'fd00:1::1', port, localAddress, family: 6 });
  socket.on('error', () => undefined);
  return once(socket, 'connect').then(() => socket);
}

/** A TLS handshake from `localAddress`: done, or the connection was closed before it. */
function handshake(port: number, localAddress: string): Promise<string> {
  return new Promise((resolve) => {
    const raw = net.connect({ host: 'fd00:1::1', port, localAddress, family: 6 });
    raw.on('error', () => undefined);
    const s = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'localhost' }, () => {
      s.destroy();
      resolve('handshake done');
    });
    s.on('error', () => resolve('closed before the handshake'));
    s.on('close', () => resolve('closed before the handshake'));
  });
}

const dir = await mkdtemp(join(tmpdir(), 'postern-accounts-ipv6-'));
const s = await startAccounts(dir, {}, { listen: '[fd00:1::1]:0', maxConnectionsPerIp: 2 });
try {
  const port = Number(new URL(s.url).port);
  let result: Record<string, unknown> | null = null;
  // The held connections have 10 s for their own handshake: should they be cut before the probes ran, again.
  for (let attempt = 0; attempt < 5 && !result; attempt++) {
    const held = [await connect(port, 'fd00:1::2'), await connect(port, 'fd00:1::2')];
    const closedOnes: number[] = [];
    held.forEach((h, i) => h.once('close', () => closedOnes.push(i)));
    const sameNetwork = await handshake(port, 'fd00:1::3');
    for (let i = 0; i < 500 && closedOnes.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    const closedBySameNetwork = [...closedOnes];
    const otherNetwork = await handshake(port, 'fd00:2::1');
    if (!held[1]!.destroyed && held[1]!.readyState === 'open') {
      result = { sameNetwork, closedBySameNetwork, otherNetwork, closedByOther: closedOnes.length - closedBySameNetwork.length };
    }
    for (const h of held) h.destroy();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  await s.server.stop();
  await rm(dir, { recursive: true, force: true });
}
process.exit(0);
