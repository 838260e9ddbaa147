/** The verdict builders inside the sandbox: what each returns, and what each refuses. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ScriptFailure } from '../../engine/sandbox/index.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

// One script per hook family; each calls the named builder with the arguments the host sends.
const CALL = 'export default function (ctx) { return globalThis[ctx.fn](...ctx.args); }';

test('verdict builders round-trip through the sandbox', async () => {
  await withSandbox({ host: recordingHost(), scripts: [js('rcptto', CALL), js('predelivery', CALL)] }, async (sandbox) => {
    const cases: Array<[string, unknown[], unknown]> = [
      ['accept', [], { verdict: 'accept' }],
      ['accept', [{ username: 'alice', text: 'welcome' }], { verdict: 'accept', username: 'alice', text: 'welcome' }],
      ['reject', [], { verdict: 'reject' }],
      ['reject', ['no relay', { code: 554, enhanced: '5.7.1', disconnect: true }], { verdict: 'reject', text: 'no relay', code: 554, enhanced: '5.7.1', disconnect: true }],
      ['defer', [], { verdict: 'defer' }],
      ['defer', ['busy', { code: 451, enhanced: '4.3.2' }], { verdict: 'defer', text: 'busy', code: 451, enhanced: '4.3.2' }],
    ];
    for (const [fn, args, expected] of cases) {
      assert.deepEqual(await sandbox.invoke('rcptto', { fn, args }, 'c1'), expected, `${fn}(${JSON.stringify(args)})`);
    }
    assert.deepEqual(await sandbox.invoke('predelivery', { fn: 'deliver', args: [] }, null), { verdict: 'deliver' });
    const route = { host: 'mx.example.net', port: 465, implicitTls: true, tls: { mode: 'verify', serverName: 'mx.example.net', ca: 'corp', clientCertificate: 'relay' } };
    assert.deepEqual(await sandbox.invoke('predelivery', { fn: 'deliver', args: [route] }, null), { verdict: 'deliver', ...route });
  });
});

test('verdict builders refuse wrong arguments where the script wrote them', async () => {
  await withSandbox({ host: recordingHost(), scripts: [js('rcptto', CALL), js('predelivery', CALL)] }, async (sandbox) => {
    const bad: Array<[string, unknown[], RegExp]> = [
      ['reject', ['x', { code: 250 }], /reject\(\): invalid code 250/],
      ['defer', ['x', { code: 550 }], /defer\(\): invalid code 550/],
      ['defer', ['x', { enhanced: '5.7.1' }], /defer\(\): invalid enhanced 5\.7\.1/],
      ['accept', [{ usrname: 'typo' }], /accept\(\): unknown option "usrname"/],
      ['accept', [{ username: 42 }], /accept\(\): invalid username 42/],
      ['reject', [42], /reject\(\): text must be a string/],
    ];
    for (const [fn, args, message] of bad) {
      await assert.rejects(sandbox.invoke('rcptto', { fn, args }, 'c1'), (e: unknown) => {
        assert.ok(e instanceof ScriptFailure);
        assert.equal(e.kind, 'error');
        assert.match(e.message, message);
        assert.equal(e.line, 1, 'the location is the script line that called the builder');
        return true;
      });
    }
    await assert.rejects(sandbox.invoke('predelivery', { fn: 'deliver', args: [{ port: 70000 }] }, null), /deliver\(\): invalid port 70000/);
    await assert.rejects(sandbox.invoke('predelivery', { fn: 'deliver', args: [{ tls: { mode: 'sometimes' } }] }, null), /deliver\(\): invalid tls\.mode sometimes/);
    // The option at fault is named: `tls`, not the options as a whole.
    await assert.rejects(sandbox.invoke('predelivery', { fn: 'deliver', args: [{ tls: 'verify' }] }, null), /deliver\(\): tls must be an object, not verify$/);
    await assert.rejects(sandbox.invoke('predelivery', { fn: 'deliver', args: [{ tls: { mod: 'verify' } }] }, null), /deliver\(\): unknown tls option "mod"$/);
    await assert.rejects(sandbox.invoke('rcptto', { fn: 'reject', args: ['x', 550] }, 'c1'), /reject\(\): options must be an object, not 550$/);
  });
});
