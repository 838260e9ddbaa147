/**
 * limits.maxConnections of an SMTP listener, shared between client addresses. Refusing whoever came last let a
 * handful of addresses, each at its maxConnectionsPerIp, hold the whole listener (10 at the default 50 fill the
 * default 500) while every other client read `421 Too many connected clients` for as long as they kept their
 * connections open and reconnected as each was cut. Postfix bounds each client with anvil to half its process
 * limit (two clients still fill it) and, under stress, only shortens its timeouts.
 *
 * Here a client that finds the listener full makes room when its address holds at least two fewer connections
 * than another's: one connection of the address holding the most is closed with a 421 (the order of
 * closing-order.ts: silent first, then one with a command line under way, then the one idle longest), so that
 * afterwards neither address holds more than the other. Never one receiving a message or whose command is being
 * answered, nor one waiting for its greeting or its end-of-data reply, nor one just accepted. Among addresses holding about as many each, nobody is closed for a newcomer: it
 * is refused, as before. Under `postern serve` a worker closes only its own connections, counted by itself, but
 * the newcomer's address is held to what it had over every worker when accepted: counted in its own worker alone,
 * a client whose connections were all on the other worker held none here, closed a connection of an address
 * holding as many as it, and that client's reconnection, on the other worker, closed one of its in turn.
 *
 * When that closes nobody, a message arriving below limits.minDataRate may make room instead (closeSlowestTransferFor),
 * and failing that a connection idle at least limits.idleWhenFullMs in the command phase (closeIdlestFor).
 */
import { firstToClose, type Standing } from '../connection-limits/closing-order.ts';
import type { TransferJudgement } from './transfer-rate.ts';

/** What the room needs of a connection (PosternConnection). */
export interface RoomMember {
  /**
   * The client's address (the one a PROXY header named) as counted: an IPv6 client's network. Worked out once per
   * connection: parsed again for each held connection at each client that found the listener full, it cost 5 µs an
   * IPv6 address, 3 ms of the server's thread per newcomer at the default 500 (a few hundred connects a second,
   * each refused, held the event loop).
   */
  readonly countedAddress: string;
  /** Connections of its address over every process when it was accepted, itself included (0: unknown). */
  readonly addressOpenAtAccept: number;
  /** What it has done, for closing-order.ts; null: it must not be closed (busy, just accepted, closing). */
  standing(): Standing | null;
  /** Whether it is still open and counted. */
  readonly counted: boolean;
  /** Close it with the reply that says why. */
  closeForAnotherClient(): void;
  /**
   * The message it is receiving arrives below its listener's limits.minDataRate (transfer-rate.ts), as judged at
   * `now`, after the sockets were read; null otherwise (no message arriving, too young, held back by us, flowing).
   */
  slowTransfer(now: number): TransferJudgement | null;
  /** Close it for a slow transfer (`judged`), with the reply that says why. */
  closeForSlowTransfer(judged: TransferJudgement): void;
  /**
   * How long it has done nothing useful in the command phase, as judged at `now` (after the sockets were read), if
   * at least `minimum` (limits.idleWhenFullMs); null otherwise, or when it must not be closed (as standing()), or is
   * in a STARTTLS handshake.
   */
  idleWhenFull(now: number, minimum: number): IdleJudgement | null;
  /** limits.idleWhenFullMs of its generation: a newcomer's is the configuration in force. */
  readonly idleWhenFullMs: number;
  /** Close it for its idleness (`judged`), with the reply that says why. */
  closeForIdleness(judged: IdleJudgement): void;
}

/** A connection's idleness as judged for a full listener. */
export interface IdleJudgement {
  idleMs: number;
  /** It had a MAIL FROM accepted at some time (it came to send mail). */
  mailSeen: boolean;
  /** The limits.idleWhenFullMs it was judged by (the newcomer's: the configuration in force). */
  minimum: number;
}

/**
 * Close one of `members` for `newcomer` (one of them) as above; false when none may be, and the newcomer is to
 * be refused.
 */
export function makeRoomFor<M extends RoomMember>(newcomer: M, members: Iterable<M>): boolean {
  const byAddress = new Map<string, M[]>();
  const own = newcomer.countedAddress;
  let ownCount = 0;
  for (const member of members) {
    if (member === newcomer || !member.counted) continue;
    const address = member.countedAddress;
    if (address === own) { ownCount++; continue; }
    let list = byAddress.get(address);
    if (!list) byAddress.set(address, list = []);
    list.push(member);
  }
  // What this process holds of the newcomer's address, or what the address held over every worker, if more.
  ownCount = Math.max(ownCount, newcomer.addressOpenAtAccept - 1);
  // The biggest holders first, those holding as many taken together; an address that holds only one more than the
  // newcomer's (with it) is not closed for it.
  const sizes = [...new Set([...byAddress.values()].map((list) => list.length))].filter((n) => n >= ownCount + 2).sort((a, b) => b - a);
  for (const size of sizes) {
    const held = [...byAddress.values()].filter((list) => list.length === size).flat();
    const victim = firstToClose(held, (member) => member.standing());
    if (victim) {
      victim.closeForAnotherClient();
      return true;
    }
  }
  return false;
}

/**
 * No connection could be closed for `newcomer` by the rule above (every one of the biggest holders receiving a
 * message, or nobody holding more): close the slowest message transfer below limits.minDataRate, if any, and
 * false when there is none. A message is protected from the rule above because its client is sending it now; a
 * client that sends it far slower than any real link (a line just within socketTimeoutMs) does not earn that
 * protection, however many addresses it comes from. `now` must be taken after the sockets were read.
 */
export function closeSlowestTransferFor<M extends RoomMember>(newcomer: M, members: Iterable<M>, now: number): boolean {
  let slowest: M | null = null;
  let judged: TransferJudgement | null = null;
  for (const member of members) {
    if (member === newcomer || !member.counted) continue;
    const judgement = member.slowTransfer(now);
    if (judgement && (!judged || judgement.bytesPerSecond < judged.bytesPerSecond)) [slowest, judged] = [member, judgement];
  }
  if (!slowest || !judged) return false;
  slowest.closeForSlowTransfer(judged);
  return true;
}

/**
 * Nobody closed by either rule above (a botnet, one connection an address, every one idle or sending a command just
 * within socketTimeoutMs): close the connection idle longest in the command phase, if idle at least
 * limits.idleWhenFullMs. One that never had a MAIL FROM accepted goes first (a client that came to send mail, a
 * connection cache between messages, loses its slot only after every such one), then the one idle longest. False
 * when none is idle that long. Junk commands (NOOP, RSET...) are not activity: a client sending one in a loop is as
 * idle as a silent one. `now` must be taken after the sockets were read, so a command that came while our event loop
 * was late is counted first.
 */
export function closeIdlestFor<M extends RoomMember>(newcomer: M, members: Iterable<M>, now: number): boolean {
  // The newcomer's limit, from the configuration in force: a connection keeps the generation it last used until its
  // next command, and an idle one has none, so its own limit was whatever it was when it went idle (a reload setting
  // 0, never, went on closing for hours the connections open before it).
  const minimum = newcomer.idleWhenFullMs;
  if (minimum === 0) return false;
  let idlest: M | null = null;
  let judged: IdleJudgement | null = null;
  for (const member of members) {
    if (member === newcomer || !member.counted) continue;
    const judgement = member.idleWhenFull(now, minimum);
    if (judgement && (!judged || before(judgement, judged))) [idlest, judged] = [member, judgement];
  }
  if (!idlest || !judged) return false;
  idlest.closeForIdleness(judged);
  return true;
}

/** `a` is closed before `b`: never a MAIL FROM first, then idle longer. */
function before(a: IdleJudgement, b: IdleJudgement): boolean {
  if (a.mailSeen !== b.mailSeen) return !a.mailSeen;
  return a.idleMs > b.idleMs;
}
