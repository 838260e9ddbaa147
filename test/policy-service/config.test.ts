// What the configuration refuses about policy services, with the key it is about.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfig } from '../../engine/config/load-config.ts';

const problems = (yaml: string): string => {
  try {
    parseConfig(yaml, 'postern.yaml', '/tmp');
    return '';
  } catch (err) {
    return (err as Error).message;
  }
};

test('policy services alone make a configuration; neither listeners nor services is refused', () => {
  const loaded = parseConfig('policyServices: [{ name: postfix, listen: "unix:./policy.sock" }]\n', 'postern.yaml', '/srv/postern');
  assert.equal(loaded.config.listeners.length, 0);
  assert.equal(loaded.config.policyServices[0]!.listen, 'unix:/srv/postern/policy.sock', 'relative to the configuration file');
  assert.equal(loaded.config.policyServices[0]!.failureAction, 'DEFER_IF_PERMIT Service temporarily unavailable');
  assert.match(problems('scripts: ./s\n'), /listeners.*needs at least one listener \(or a policy service\)/);
});

test('tables, pins and names are checked', () => {
  assert.match(problems('policyServices: [{ name: p, listen: "127.0.0.1:1", relayClientCertificatesTable: nope }]\n'), /relayClientCertificatesTable.*no table named "nope"/);
  assert.match(problems('tables: { pins: ./pins }\npolicyServices: [{ name: p, listen: "127.0.0.1:1", fingerprintDigest: md5, certificateIdentity: { pins: pins } }]\n'),
    /pins are SPKI SHA-256: needs fingerprintDigest sha256/);
  assert.match(problems('listeners: [{ name: p, listen: "127.0.0.1:2" }]\npolicyServices: [{ name: p, listen: "127.0.0.1:1" }]\n'), /policyServices.*name already used/);
  assert.match(problems('policyServices: [{ name: p, listen: "localhost" }]\n'), /expected address:port or unix:\/path/);
  assert.match(problems('policyServices: [{ name: p, listen: "127.0.0.1:1", failureAction: "OK\\nDUNNO" }]\n'), /failureAction.*one line/);
});

test('a failed script can only defer: failureAction refuses every action that lets the mail through or bounces it', () => {
  const withAction = (action: string): string => problems(`policyServices: [{ name: p, listen: "127.0.0.1:1", failureAction: ${JSON.stringify(action)} }]\n`);
  for (const letsThrough of ['OK', 'ok', 'DUNNO', 'PERMIT', 'PREPEND X-Checked: no', 'HOLD', 'DISCARD', 'FILTER smtp:[127.0.0.1]:10025', 'REDIRECT a@b.example',
    'DEFER_IF_REJECT later', 'REJECT', '554 5.7.1 No', '250 OK', '4.3.5 no code', 'DEFERRED', '451x']) {
    assert.match(withAction(letsThrough), /failureAction.*a failed script must defer the mail/, letsThrough);
  }
  for (const defers of ['DEFER_IF_PERMIT Service temporarily unavailable', 'defer_if_permit', 'DEFER try later', 'DEFER', '451 4.3.5 Server configuration problem', '421 bye']) {
    assert.equal(withAction(defers), '', defers);
  }
});
