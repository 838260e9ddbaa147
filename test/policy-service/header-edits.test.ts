// A data hook's header edits over the policy protocol (real sockets): exactly one `add` at the DATA state
// is Postfix's `PREPEND name: value`; what access(5) cannot say — set, remove, several edits, a header at
// END-OF-MESSAGE — fails closed with the failure action and an error naming the script. The edits are
// checked as on a listener (no CR/LF can reach the answer line).
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';
import { registry } from '../../engine/metrics/metrics.ts';

let s: TestServer;
const tcp = (name: string) => ({ port: Number(s.policyAddresses.get(name)!.split(':').pop()) });
const data = (sender: string, state = 'DATA') => rcptRequest({ protocol_state: state, sender, size: 1234 });
const FAILURE = 'action=DEFER_IF_PERMIT Service temporarily unavailable';

before(async () => {
  s = await startTestServer({
    config: `
policyServices:
  - name: main
    listen: 127.0.0.1:0
  - name: authoritative
    listen: 127.0.0.1:0
    authoritative: true
    failureAction: 451 4.3.5 Server configuration problem
`,
    scripts: {
      'data.ts': `
const edits = {
  one: [{ op: 'add', name: 'X-Postern-Client', value: 'cert=' + 'laptop' }],
  empty: [],
  two: [{ op: 'add', name: 'X-A', value: '1' }, { op: 'add', name: 'X-B', value: '2' }],
  set: [{ op: 'set', name: 'Subject', value: 'replaced' }],
  remove: [{ op: 'remove', name: 'X-Spam' }],
  crlf: [{ op: 'add', name: 'X-A', value: 'a\\r\\nX-Injected: yes' }],
  colon: [{ op: 'add', name: 'X-A: b', value: 'c' }],
};
export default function (ctx) {
  const key = ctx.transaction.sender.localPart;
  if (key === 'state') return accept({ headers: [{ op: 'add', name: 'X-State', value: ctx.postfix.protocolState }] });
  if (key === 'size') return accept({ headers: [{ op: 'add', name: 'X-Size', value: String(ctx.data.size) }] });
  return edits[key] ? accept({ headers: edits[key] }) : accept();
}`,
      'rcptto.ts': `export default () => accept({ headers: [{ op: 'add', name: 'X-A', value: '1' }] });`,
    },
  });
});
after(() => s?.stop());

const logged = (pattern: RegExp) => s.logs.some((l) => l.level === 50 && pattern.test(String(l.msg)));

test('one add at DATA: PREPEND name: value (the accept itself stays DUNNO, PREPEND goes on to the next restriction)', async () => {
  const c = await PolicyClient.connect(tcp('main'));
  assert.equal(await c.ask(data('one@example.org')), 'action=PREPEND X-Postern-Client: cert=laptop');
  assert.equal(await c.ask(data('size@example.org')), 'action=PREPEND X-Size: 1234');
  assert.equal(await c.ask(data('state@example.org', 'data')), 'action=PREPEND X-State: DATA', 'protocol_state is matched whatever its case');
  assert.equal(await c.ask(data('empty@example.org')), 'action=DUNNO', 'no edits: a plain accept');
  assert.equal(await c.ask(data('plain@example.org')), 'action=DUNNO');
  c.close();
  // An authoritative service cannot say OK and PREPEND in one answer: the header wins, the next restriction decides.
  const a = await PolicyClient.connect(tcp('authoritative'));
  assert.equal(await a.ask(data('one@example.org')), 'action=PREPEND X-Postern-Client: cert=laptop');
  assert.equal(await a.ask(data('plain@example.org')), 'action=OK');
  a.close();
  assert.match(await registry.getSingleMetricAsString('postern_policy_requests_total'), /service="main",state="DATA",action="prepend"\} [1-9]/);
});

test('what access(5) cannot say fails closed, with an error naming the script', async () => {
  const c = await PolicyClient.connect(tcp('main'));
  const script = join(s.dir, 'scripts', 'data.ts');
  for (const [sender, why] of [
    ['two', /2 header edits: a Postfix policy answer holds one action/],
    ['set', /header edit "set" Subject: .*not replace one/],
    ['remove', /header edit "remove" X-Spam: .*not remove one/],
  ] as const) {
    assert.equal(await c.ask(data(`${sender}@example.org`)), FAILURE, sender);
    assert.ok(s.logs.some((l) => l.level === 50 && l.script === script && why.test(String(l.msg)) && String(l.msg).includes(script)), `${sender}: logged with ${script}`);
  }
  // Postfix ignores PREPEND in smtpd_end_of_data_restrictions: the header would be lost, so it is a failure too.
  assert.equal(await c.ask(data('one@example.org', 'END-OF-MESSAGE')), FAILURE);
  assert.ok(logged(/header edits at END-OF-MESSAGE: Postfix applies PREPEND only before the message content/));
  c.close();
  const a = await PolicyClient.connect(tcp('authoritative'));
  assert.equal(await a.ask(data('two@example.org')), 'action=451 4.3.5 Server configuration problem', 'the service\'s own failure action');
  a.close();
});

test('an edit that could split the answer or the header is a malformed verdict: the failure action, nothing injected', async () => {
  const c = await PolicyClient.connect(tcp('main'));
  assert.equal(await c.ask(data('crlf@example.org')), FAILURE);
  assert.ok(logged(/policy script data failed: .*line break/));
  assert.equal(await c.ask(data('colon@example.org')), FAILURE);
  assert.ok(logged(/policy script data failed: .*name must be 1 to 76 printable/));
  // The connection is still in step: the next answer is the next request's.
  assert.equal(await c.ask(data('one@example.org')), 'action=PREPEND X-Postern-Client: cert=laptop');
  c.close();
});

test('header edits stay a data-hook option: from rcptto they are a script failure, as on a listener', async () => {
  const c = await PolicyClient.connect(tcp('main'));
  assert.equal(await c.ask(rcptRequest()), FAILURE);
  assert.ok(logged(/policy script rcptto failed: .*only a data hook can edit the message/));
  c.close();
});
