// The admin listener counts an IPv6 client's connections by its network (admin.ipv6PrefixLength, /64 by
// default) for admin.maxConnectionsPerIp, as the SMTP listeners and the account page do: counted per
// address, a host with a /64 could hold the cap from each of its addresses, and so all 64 connections.
// Loopback has one IPv6 address, so the listener and its clients (curl) run in a network namespace of
// their own (unshare -rn) with fd00:1::/64 and fd00:2::/64 on its loopback.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);
const CHILD = new URL('./ipv6-admin-clients.ts', import.meta.url).pathname;
const canUnshare = spawnSync('unshare', ['-rn', 'ip', 'link', 'set', 'lo', 'up']).status === 0;

test('two addresses of one /64 share admin.maxConnectionsPerIp; another /64 has its own', {
  skip: canUnshare ? false : 'unshare -rn (a user and network namespace) is not permitted here', timeout: 120_000,
}, async () => {
  const setup = [
    'ip link set lo up',
    ...['fd00:1::1', 'fd00:1::2', 'fd00:1::3', 'fd00:2::1'].map((a) => `ip -6 addr add ${a}/64 dev lo nodad`),
    `exec ${process.execPath} ${CHILD}`,
  ].join(' && ');
  const { stdout } = await run('unshare', ['-rn', 'sh', '-c', setup], { env: { ...process.env, NODE_NO_WARNINGS: '1' }, timeout: 100_000 });
  const result = JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>;
  assert.deepEqual(result, {
    sameNetwork: 'ok',
    closedBySameNetwork: [0], // the older held one, closed for it: the same /64 was over its cap
    otherNetwork: 'ok',
    closedByOther: 0,
    madeRoom: ['fd00:1::/64'],
  });
});
