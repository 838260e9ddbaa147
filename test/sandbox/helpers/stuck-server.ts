/**
 * Run by containment-smtp.test.ts in a child process: a real Postern whose rcptto script gets stuck in a
 * builtin that V8 never interrupts, for the recipient `stuck@…`. Such a process cannot exit normally
 * afterwards (see helpers/stuck-builtin.ts), so the test kills it. Prints {"port": n} once listening,
 * a line {"unrecoverable": reason} when the sandbox signals it, and {"abandoned": n} each time the pool has
 * abandoned the n-th stuck isolate (its client's share of the isolates is held until then).
 */
import { startTestServer } from '../../helpers/postern.ts';
import { onUnrecoverable } from '../../../engine/sandbox/index.ts';

const server = await startTestServer({
  config: `
localDomains: [example.com]
sandbox: { timeoutMs: 200, isolates: 2, fastPathMs: 0 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`,
  scripts: {
    'helo.ts': 'export default () => {};', // EHLO goes through the sandbox too
    'rcptto.ts': `export default (ctx) => {
      if (ctx.address.localPart === 'stuck') Array(2 ** 32 - 1).lastIndexOf(1);
      if (ctx.address.localPart === 'nobody') return reject('No such user', { code: 550, enhanced: '5.1.1' });
    };`,
  },
});
onUnrecoverable((reason) => process.stdout.write(`${JSON.stringify({ unrecoverable: reason })}\n`));
let abandoned = 0;
setInterval(() => {
  const now = server.logs.filter((l) => /it is abandoned and replaced/.test(String(l.msg ?? l.message))).length;
  for (; abandoned < now; ) process.stdout.write(`${JSON.stringify({ abandoned: ++abandoned })}\n`);
}, 20).unref();
process.stdout.write(`${JSON.stringify({ port: server.port('mx') })}\n`);
