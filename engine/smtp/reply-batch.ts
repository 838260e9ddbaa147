/**
 * Replies written during one turn of the event loop leave together, at its end (the check phase, after
 * every I/O callback of the turn has run): Redis's "write before sleep". Each socket still gets its own
 * write, but the writes come in one burst instead of being spread over the turn, so a client process
 * that sleeps between replies is woken once per burst, not once per reply — on a virtual machine every
 * wake-up of an idle CPU is an interrupt sent through the hypervisor, paid by the writer. A reply waits
 * at most for the rest of the turn it was produced in.
 *
 * Only TLS sockets whose handshake is done take part: a plaintext reply may be followed in the same turn
 * by a TLS upgrade of the socket (STARTTLS), which must find nothing waiting in the socket's buffer.
 */
import type { TLSSocket } from 'node:tls';
import type net from 'node:net';

const corked = new Set<net.Socket>();
let flushScheduled = false;
let flushAfterScriptsScheduled = false;

function flush(): void {
  flushScheduled = false;
  for (const socket of corked) {
    // end() flushes a corked socket itself; a destroyed one has nothing left to send.
    if (!socket.destroyed && socket.writableCorked > 0) socket.uncork();
  }
  corked.clear();
}

/** Call before writing a reply to `socket`: holds the write back until the end of this turn when it may. */
export function batchReply(socket: net.Socket): void {
  if ((socket as TLSSocket).encrypted !== true || corked.has(socket) || socket.destroyed) return;
  socket.cork();
  corked.add(socket);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flush);
  }
}

/**
 * Call right after starting a script call whose verdict becomes a reply. Its batch runs in this turn's
 * check phase (engine/sandbox/sandbox.ts, setImmediate) and the reply is written during it, when the flush
 * above either ran already (queued earlier in the turn) or would be queued behind the check phase, in the
 * next turn: one more poll of the event loop, with its system call, before the client has its answer. A
 * flush queued now runs right after the batch, in the same check phase.
 */
export function flushAfterScriptCalls(): void {
  if (flushAfterScriptsScheduled) return;
  flushAfterScriptsScheduled = true;
  setImmediate(flushAfterScripts);
}

function flushAfterScripts(): void {
  flushAfterScriptsScheduled = false;
  flush();
}
