// examples/systemd/postern.service as docs/operations.md installs it, emulated with real tools
// (test/helpers/systemd-unit.ts): its user, capabilities, umask, address families, and a file system read-only
// but for its ReadWritePaths.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { networkInterfaces } from 'node:os';
import { directive, startUnderUnit, unitEmulationSkip, unitSeconds, unitService } from '../helpers/systemd-unit.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const skip = unitEmulationSkip();

/** A port below 1024 free on every IPv4 address: 25 if it is, else one of 600–1000. */
async function freePrivilegedPort(): Promise<number> {
  for (const port of [25, ...Array.from({ length: 400 }, (_, i) => 600 + i)]) {
    const free = await new Promise<boolean>((resolve) => {
      const s = net.createServer().once('error', () => resolve(false));
      s.listen(port, '0.0.0.0', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port below 1024');
}

// An address of this machine's interfaces other than loopback (which the loop check knows without asking).
const interfaceAddress = Object.values(networkInterfaces()).flat().find((i) => i?.family === 'IPv4' && !i.internal)?.address ?? '127.0.0.1';

test('under the unit: port 25 on every address as the service user; a next hop that is this server bounces as a loop (the interfaces are read without netlink)', { skip, timeout: 120_000 }, async () => {
  const port = await freePrivilegedPort();
  const s = await startUnderUnit({
    ports: { mx: port },
    config: `dataDir: /var/lib/postern
workers: 1
localDomains: [loop.test]
listeners:
  - { name: mx, listen: "0.0.0.0:{PORT:mx}", reverseDns: false, limits: { greetingDelayMs: 0 } }
delivery:
  route: { smarthost: { host: ${interfaceAddress}, port: {PORT:mx} } }
  tls: { mode: none }
  scanIntervalMs: 200
`,
  });
  try {
    const c = await SmtpTestClient.connect(port);
    assert.equal((await c.read(30_000)).code, 220);
    assert.equal((await c.command('EHLO client.test', 30_000)).code, 250);
    const r = await c.sendMail('a@sender.test', ['u@loop.test'], 'Subject: loop\r\n\r\nx\r\n');
    assert.equal(r.code, 250, r.text);
    await c.quit();
    const id = /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
    const line = await s.waitFor('the delivery line', () => s.logs.find((l) => l.id === id && (l.status === 'bounced' || l.status === 'deferred')), 20_000).catch((err: Error) => { throw new Error(`${err.message}\n${s.lines.slice(-15).join('\n')}`); });
    assert.match(String(line.reply), /loops back to myself/, JSON.stringify(line));
  } finally { await s.stop(); }
});
