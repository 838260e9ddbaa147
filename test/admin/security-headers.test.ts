// The admin listener's answers as a browser on the management network would take them (curl -i, a real client):
// every answer — 200s, 404, 405, 421 and 500 alike — says nosniff (a text/plain body is never run as a script or
// styles), no-store (a proxy or the browser's cache keeps no copy of /status, /metrics: accounts, devices, errors),
// may not be framed, and loads nothing (a CSP of default-src 'none'). Before, only cache-control was sent,
// and not on the refusal of a HEAD/POST or a failure.
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
      admin: { listen: '127.0.0.1:0' },
      listeners: [testListener('mx', { tls: { mode: 'none' } })],
    }),
  });
});
after(() => s?.stop());

/** The status code and headers (lowercase names) of `curl -i` on `path`. */
async function headersOf(path: string, extra: string[] = []): Promise<{ status: number; headers: Map<string, string> }> {
  const { stdout } = await run('curl', ['-sS', '-i', ...extra, `http://127.0.0.1:${s.admin!.address.port}${path}`]);
  const [statusLine, ...lines] = stdout.split('\r\n\r\n')[0]!.split('\r\n');
  const headers = new Map(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
  return { status: Number(statusLine!.split(' ')[1]), headers };
}

test('every answer of the admin listener carries nosniff, no-store, no framing and a CSP that loads nothing', async () => {
  const asks: [string, string[], number][] = [
    ['/healthz', [], 200], ['/metrics', [], 200], ['/status', [], 200], ['/readyz', [], 200],
    ['/nothing-here', [], 404], ['/readyz?listener=nope', [], 404], ['/status', ['-X', 'POST'], 405],
    ['/status', ['-H', 'Host: attacker.example'], 421],
  ];
  for (const [path, extra, status] of asks) {
    const r = await headersOf(path, extra);
    const what = `${extra.join(' ')} ${path}`;
    assert.equal(r.status, status, what);
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff', what);
    assert.equal(r.headers.get('cache-control'), 'no-store', what);
    assert.equal(r.headers.get('x-frame-options'), 'DENY', what);
    assert.match(r.headers.get('content-security-policy') ?? '', /default-src 'none'.*frame-ancestors 'none'/, what);
    assert.equal(r.headers.get('referrer-policy'), 'no-referrer', what);
  }
});

test('a method other than GET or HEAD gets 405 with the Allow header RFC 9110 requires of it', async () => {
  for (const method of ['POST', 'PUT', 'DELETE', 'OPTIONS']) {
    const r = await headersOf('/status', ['-X', method]);
    assert.equal(r.status, 405, method);
    assert.equal(r.headers.get('allow'), 'GET, HEAD', method);
  }
});
