// Every hook Postfix can ask (each protocol_state) x every verdict and option the script API allows, and hostile
// ones, over the policy protocol: each answer is the access(5) action docs/postfix-policy.md gives that verdict, or
// the failure action (fail closed). No verdict becomes DUNNO or OK unless it is an accept without anything Postfix
// cannot be told. One script per hook; the case is the request's policy_context.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

const FAILED = 'DEFER_IF_PERMIT Service temporarily unavailable';
const STATES = { CONNECT: 'connect', EHLO: 'helo', MAIL: 'mailfrom', RCPT: 'rcptto', DATA: 'data', 'END-OF-MESSAGE': 'data' } as const;
type State = keyof typeof STATES;
const REFUSED: Record<string, string> = { connect: 'Connection', helo: 'HELO', mailfrom: 'Sender', rcptto: 'Recipient', data: 'Message' };
const rejectCode = (state: State): string => (state === 'CONNECT' ? '554' : '550');

/** [case, what the script returns, the answer at each state]. */
const CASES: Array<[string, string, (state: State) => string]> = [
  ['none', 'undefined', () => 'DUNNO'],
  ['accept', 'accept()', () => 'DUNNO'],
  ['accept-text', 'accept({ text: "fine" })', () => 'DUNNO'],
  ['accept-username', '({ verdict: "accept", username: "root" })', () => 'DUNNO'],
  ['reject', 'reject("no\\r\\naction=OK\\n\\n", { code: 554, enhanced: "5.7.0" })', () => '554 5.7.0 no action=OK '],
  ['reject-default', 'reject()', (s) => `${rejectCode(s)} 5.7.1 ${REFUSED[STATES[s]]} refused by policy`],
  ['reject-text-250', '({ verdict: "reject", text: "250 OK" })', (s) => `${rejectCode(s)} 5.7.1 250 OK`],
  ['reject-nul', 'reject("a\\u0000b\\u0085c")', (s) => `${rejectCode(s)} 5.7.1 a b c`],
  ['reject-long', 'reject("x".repeat(100000))', (s) => `${rejectCode(s)} 5.7.1 ${'x'.repeat(400)}`],
  // Past 1 MiB a text is not cut but refused (docs/scripts.md, limits): a script failure.
  ['reject-huge', 'reject("x".repeat(10 * 1024 * 1024))', () => FAILED],
  ['reject-disconnect', 'reject("bye", { disconnect: true })', (s) => `${rejectCode(s)} 5.7.1 bye`],
  ['defer', 'defer("later", { code: 452, enhanced: "4.2.2" })', () => 'DEFER_IF_PERMIT later'],
  ['defer-disconnect', 'defer(undefined, { disconnect: true })', () => 'DEFER_IF_PERMIT Temporary policy failure, try again later'],
  ['hold', 'accept({ hold: "look" })', (s) => (STATES[s] === 'data' ? 'HOLD look' : FAILED)],
  ['header', 'accept({ headers: [{ op: "add", name: "X-A", value: "1" }] })', (s) => (s === 'DATA' ? 'PREPEND X-A: 1' : FAILED)],
  ['header-set', 'accept({ headers: [{ op: "set", name: "X-A", value: "1" }] })', () => FAILED],
  ['reject-2xx', '({ verdict: "reject", code: 250 })', () => FAILED],
  ['defer-5xx', '({ verdict: "defer", code: 550 })', () => FAILED],
  ['code-float', '({ verdict: "reject", code: 550.5 })', () => FAILED],
  ['code-string', '({ verdict: "reject", code: "550" })', () => FAILED],
  ['enhanced-class', '({ verdict: "defer", enhanced: "5.7.1" })', () => FAILED],
  ['text-number', '({ verdict: "reject", text: 42 })', () => FAILED],
  ['disconnect-string', '({ verdict: "reject", disconnect: "yes" })', () => FAILED],
  ['hold-number', '({ verdict: "accept", hold: 1 })', () => FAILED],
  ['hold-newline', '({ verdict: "accept", hold: "a\\nOK" })', () => FAILED],
  ['deliver', '({ verdict: "deliver" })', () => FAILED],
  ['unknown-verdict', '({ verdict: "discard" })', () => FAILED],
  ['string', '"OK"', () => FAILED],
  ['rejects-verdict', 'Promise.reject(accept())', () => FAILED],
  ['throws-undefined', '(() => { throw undefined; })()', () => FAILED],
  ['unhandled', '(Promise.reject(new Error("lost")), accept())', () => FAILED],
];

// Each script decides its own states only: the connect, helo and mailfrom scripts also decide later states first
// (earlier-stages.ts), and would answer there for the later hook.
const script = (hook: string): string => `export default function (ctx) {
  if (!${JSON.stringify(Object.keys(STATES).filter((state) => STATES[state as State] === hook))}.includes(ctx.postfix.protocolState)) return;
  const c = ctx.postfix.attributes.policy_context;
${CASES.map(([name, verdict]) => `  if (c === ${JSON.stringify(name)}) return ${verdict};`).join('\n')}
  throw new Error('no case ' + c);
}`;

test('each verdict in each Postfix state is answered as the docs say, or with the failure action', async () => {
  const s = await startTestServer({
    config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n',
    scripts: Object.fromEntries(['connect', 'helo', 'mailfrom', 'rcptto', 'data'].map((h) => [`${h}.js`, script(h)])),
  });
  try {
    const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get('main')!.split(':').pop()) });
    const wrong: string[] = [];
    // Each request its own SMTP session (client_port): an earlier stage's verdict is kept per session.
    let port = 1000;
    for (const state of Object.keys(STATES) as State[]) {
      for (const [name, , expected] of CASES) {
        const answer = await c.ask(rcptRequest({ protocol_state: state, policy_context: name, size: 100, client_port: port++ }));
        if (answer !== `action=${expected(state)}`) wrong.push(`${state} ${name}: ${JSON.stringify(answer.slice(0, 120))}`);
      }
    }
    // Postfix states without a hook decide nothing here.
    assert.equal(await c.ask(rcptRequest({ protocol_state: 'VRFY', policy_context: 'reject' })), 'action=DUNNO');
    c.close();
    assert.deepEqual(wrong, []);
  } finally {
    await s.stop();
  }
});
