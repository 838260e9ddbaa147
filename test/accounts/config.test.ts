// The `accounts` section: off by default, names an existing TLS listener, and moving it needs a restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfig } from '../../engine/config/load-config.ts';
import { ConfigError } from '../../engine/config/config-error.ts';
import { restartNeeded } from '../../engine/reload/restart-needed.ts';

const LISTENERS = `listeners:
  - name: plain
    listen: 127.0.0.1:25
  - name: submission
    listen: 127.0.0.1:587
    tls: { mode: starttls, cert: c.pem, key: k.pem }
`;

function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, '/etc/postern.yaml', '/etc');
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.message.split('\n');
  }
  assert.fail('expected a configuration error');
}

test('off without the section; defaults with it', () => {
  assert.equal(parseConfig(LISTENERS, '/etc/postern.yaml', '/etc').config.accounts, undefined);
  const { accounts } = parseConfig(`${LISTENERS}accounts: { listen: "127.0.0.1:8443", listener: submission }\n`, '/etc/postern.yaml', '/etc').config;
  assert.deepEqual(accounts, { listen: '127.0.0.1:8443', listener: 'submission', sessionMinutes: 30, issueDays: 730, deviceAdditionsPerHour: 20, maxConnectionsPerIp: 16 });
});

test('the listener must exist and have TLS (the page is HTTPS with its certificate)', () => {
  assert.match(problems(`${LISTENERS}accounts: { listen: "127.0.0.1:8443", listener: nosuch }\n`)[0]!, /accounts\.listener: no listener named "nosuch"/);
  assert.match(problems(`${LISTENERS}accounts: { listen: "127.0.0.1:8443", listener: plain }\n`)[0]!, /accounts\.listener: listener plain has tls\.mode none: the account page is HTTPS only/);
  assert.match(problems(`${LISTENERS}accounts: { listen: "8443", listener: submission }\n`)[0]!, /accounts\.listen: expected address:port/);
});

test('turning the page on, off or moving it waits for a restart; other keys do not', () => {
  const base = parseConfig(LISTENERS, '/etc/postern.yaml', '/etc').config;
  const on = parseConfig(`${LISTENERS}accounts: { listen: "127.0.0.1:8443", listener: submission }\n`, '/etc/postern.yaml', '/etc').config;
  const moved = parseConfig(`${LISTENERS}accounts: { listen: "127.0.0.1:9443", listener: submission }\n`, '/etc/postern.yaml', '/etc').config;
  const longer = parseConfig(`${LISTENERS}accounts: { listen: "127.0.0.1:8443", listener: submission, sessionMinutes: 90 }\n`, '/etc/postern.yaml', '/etc').config;
  assert.deepEqual(restartNeeded(base, on), ['accounts.listen off → 127.0.0.1:8443']);
  assert.deepEqual(restartNeeded(on, moved), ['accounts.listen 127.0.0.1:8443 → 127.0.0.1:9443']);
  assert.deepEqual(restartNeeded(on, base), ['accounts.listen 127.0.0.1:8443 → off']);
  assert.deepEqual(restartNeeded(on, longer), []);
});
