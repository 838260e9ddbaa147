// DNS rebinding against the admin listener: a web page on attacker.example, visited by a browser on the
// server or its management network, rebinds its name to the listener's address; its requests are then
// same-origin for the browser and could read /metrics (the accounts and devices of client certificates) and
// /status. The browser sends Host: attacker.example: refused (421). IP addresses, localhost, the server's
// hostname and admin.hosts are served (curl, a real client, sending the Host header a browser would).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { configYaml, testListener } from '../helpers/config.ts';

const run = promisify(execFile);
let s: TestServer;

before(async () => {
  s = await startTestServer({
    config: configYaml({
      hostname: 'mail.example.com',
      localDomains: ['example.com'],
      admin: { listen: '127.0.0.1:0', hosts: ['Metrics.Internal.Example'] },
      listeners: [testListener('mx', { tls: { mode: 'none' } })],
    }),
  });
});
after(() => s?.stop());

/** Status code and body of GET `path` with this Host header (curl connects to 127.0.0.1 whatever it says). */
async function get(path: string, host: string): Promise<{ status: number; body: string }> {
  const { stdout } = await run('curl', ['-sS', '-H', `Host: ${host}`, '-w', '\n%{http_code}', `http://127.0.0.1:${s.admin!.address.port}${path}`]);
  const at = stdout.lastIndexOf('\n');
  return { status: Number(stdout.slice(at + 1)), body: stdout.slice(0, at) };
}

test('a request naming another host (a rebound name) is refused 421; addresses, localhost, hostname and admin.hosts are served', async () => {
  const port = s.admin!.address.port;
  for (const path of ['/metrics', '/status', '/readyz', '/healthz']) {
    for (const host of [`attacker.example:${port}`, 'attacker.example', `mail.example.com.attacker.example:${port}`, `127.0.0.1.nip.io:${port}`]) {
      const r = await get(path, host);
      assert.equal(r.status, 421, `${path} Host: ${host}`);
      assert.doesNotMatch(r.body, /postern_|listeners|ready/, 'nothing of the server in the refusal');
    }
  }
  for (const host of [`127.0.0.1:${port}`, '127.0.0.1', `[::1]:${port}`, `localhost:${port}`, 'LOCALHOST', `mail.example.com:${port}`, 'mail.example.com.', `metrics.internal.example:${port}`]) {
    const r = await get('/metrics', host);
    assert.equal(r.status, 200, `Host: ${host}`);
    assert.match(r.body, /postern_/);
  }
});
