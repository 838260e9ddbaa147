/**
 * A tiny authoritative DNS server on 127.0.0.1 (UDP, node:dgram) for tests: answers from a table of
 * records, NXDOMAIN for names it does not know, NODATA for a known name without the type asked; names
 * can be made to answer SERVFAIL or nothing at all, or to answer late (`recursing`). Counts the queries it gets,
 * so tests can see a cache.
 * A CNAME is followed to its target's records when they are in the table (as a recursive resolver does).
 * Hand-rolled: one question per query, answers point back to it (RFC 1035 §4.1.4 compression).
 */
import dgram from 'node:dgram';
import { once } from 'node:events';
import { isIPv4 } from 'node:net';

export type TestRecord =
  | { type: 'A' | 'AAAA' | 'PTR' | 'CNAME'; value: string; ttl?: number }
  | { type: 'TXT'; value: string[]; ttl?: number }
  | { type: 'MX'; value: { exchange: string; priority: number }; ttl?: number };

const TYPES: Record<string, number> = { A: 1, CNAME: 5, PTR: 12, MX: 15, TXT: 16, AAAA: 28 };
const TYPE_NAMES = Object.fromEntries(Object.entries(TYPES).map(([k, v]) => [v, k]));

export interface TestDnsServer {
  /** `127.0.0.1:<port>`, for `dns.servers`. */
  readonly address: string;
  /** Queries received, by `TYPE name`. */
  readonly queries: Map<string, number>;
  /** name (lowercase, no trailing dot) → records. */
  readonly zone: Map<string, TestRecord[]>;
  /** Names answered with SERVFAIL, with REFUSED, with the TC bit and no records (there is no TCP), and never. */
  readonly servfail: Set<string>;
  readonly refused: Set<string>;
  readonly truncated: Set<string>;
  readonly silent: Set<string>;
  /**
   * name → ms: answered as a recursive resolver answers a name it must first look up elsewhere. Queries are
   * held until that long after the first one for the name, then all answered (later ones at once); a client
   * that gave up on a query in the meantime (c-ares asks each try from a new port) misses its answer.
   */
  readonly recursing: Map<string, number>;
  /**
   * Names whose first query is held until the next query for them comes, then answered SERVFAIL (its recursion
   * failed upstream) while that next one is answered from the zone: a client that asked again in the meantime
   * has an answer coming after the SERVFAIL.
   */
  readonly servfailFirstTry: Set<string>;
  stop(): Promise<void>;
}

export async function startDnsServer(records: Record<string, TestRecord[]> = {}): Promise<TestDnsServer> {
  const socket = dgram.createSocket('udp4');
  const zone = new Map(Object.entries(records).map(([k, v]) => [k.toLowerCase(), v]));
  const queries = new Map<string, number>();
  const servfail = new Set<string>();
  const refused = new Set<string>();
  const truncated = new Set<string>();
  const silent = new Set<string>();
  const recursing = new Map<string, number>();
  const servfailFirstTry = new Set<string>();
  /** `TYPE name` → the SERVFAIL held for its first query (servfailFirstTry), sent when the next query comes. */
  const firstTryHeld = new Map<string, () => void>();
  /** `TYPE name` → when its recursion is done (performance.now()). */
  const resolvedAt = new Map<string, number>();
  const held = new Set<NodeJS.Timeout>();
  socket.on('message', (query, peer) => {
    const q = parseQuestion(query);
    if (!q) return;
    const key = `${TYPE_NAMES[q.type] ?? q.type} ${q.name}`;
    queries.set(key, (queries.get(key) ?? 0) + 1);
    if (silent.has(q.name)) return;
    if (servfailFirstTry.has(q.name) && queries.get(key) === 1) {
      firstTryHeld.set(key, () => socket.send(response(query, q.end, 2, [], false), peer.port, peer.address));
      return;
    }
    firstTryHeld.get(key)?.();
    firstTryHeld.delete(key);
    const known = zone.get(q.name);
    const rcode = servfail.has(q.name) ? 2 : refused.has(q.name) ? 5 : known ? 0 : 3;
    const answers = chase(zone, q.name, q.type);
    const reply = response(query, q.end, rcode, rcode === 0 && !truncated.has(q.name) ? answers : [], truncated.has(q.name));
    const recursion = recursing.get(q.name);
    if (recursion === undefined) return socket.send(reply, peer.port, peer.address);
    if (!resolvedAt.has(key)) resolvedAt.set(key, performance.now() + recursion);
    const timer = setTimeout(() => { held.delete(timer); socket.send(reply, peer.port, peer.address); }, Math.max(0, resolvedAt.get(key)! - performance.now()));
    held.add(timer);
  });
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  return {
    address: `127.0.0.1:${socket.address().port}`, queries, zone, servfail, refused, truncated, silent, recursing, servfailFirstTry,
    stop: () => {
      for (const timer of held) clearTimeout(timer);
      return new Promise((resolve) => socket.close(() => resolve()));
    },
  };
}

function parseQuestion(msg: Buffer): { name: string; type: number; end: number } | null {
  if (msg.length < 17 || msg.readUInt16BE(4) !== 1) return null;
  const labels: string[] = [];
  let i = 12;
  while (i < msg.length && msg[i] !== 0) {
    const n = msg[i]!;
    labels.push(msg.subarray(i + 1, i + 1 + n).toString('latin1'));
    i += 1 + n;
  }
  if (i + 5 > msg.length) return null;
  return { name: labels.join('.').toLowerCase(), type: msg.readUInt16BE(i + 1), end: i + 5 };
}

function encodeName(name: string): Buffer {
  const parts = name.replace(/\.$/, '').split('.').filter(Boolean).map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')]));
  return Buffer.concat([...parts, Buffer.from([0])]);
}

function rdata(r: TestRecord): Buffer {
  switch (r.type) {
    case 'A': return Buffer.from(r.value.split('.').map(Number));
    case 'AAAA': {
      const [head, tail = ''] = r.value.split('::');
      const h = head ? head.split(':') : [];
      const t = tail ? tail.split(':') : [];
      const groups = r.value.includes('::') ? [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t] : h;
      const out = Buffer.alloc(16);
      groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
      return out;
    }
    case 'PTR':
    case 'CNAME': return encodeName(r.value);
    case 'MX': {
      const pref = Buffer.alloc(2);
      pref.writeUInt16BE(r.value.priority);
      return Buffer.concat([pref, encodeName(r.value.exchange)]);
    }
    case 'TXT': return Buffer.concat(r.value.map((s) => Buffer.concat([Buffer.from([Buffer.byteLength(s)]), Buffer.from(s)])));
  }
}

/** A record of an answer; `owner` when it is not the question's name (a CNAME's target). */
type AnswerRecord = TestRecord & { owner?: string };

/**
 * The records of `name` of `type`, as a recursive resolver answers: a CNAME (which answers every type) and then
 * its target's records when the target is in the zone too, up to 8 links.
 */
function chase(zone: Map<string, TestRecord[]>, name: string, type: number): AnswerRecord[] {
  const out: AnswerRecord[] = [];
  let owner = name;
  for (let link = 0; link < 8; link++) {
    const records = zone.get(owner) ?? [];
    const alias = records.find((r) => r.type === 'CNAME');
    if (!alias || type === TYPES.CNAME) return [...out, ...records.filter((r) => TYPES[r.type] === type).map((r) => ({ ...r, owner: link ? owner : undefined }))];
    out.push({ ...alias, owner: link ? owner : undefined });
    owner = (alias.value as string).replace(/\.$/, '').toLowerCase();
  }
  return out;
}

function response(query: Buffer, questionEnd: number, rcode: number, answers: AnswerRecord[], truncated = false): Buffer {
  const header = Buffer.alloc(12);
  query.copy(header, 0, 0, 2); // id
  header.writeUInt16BE(0x8000 | 0x0400 | (truncated ? 0x0200 : 0) | (query.readUInt16BE(2) & 0x0100) | 0x0080 | rcode, 2); // QR AA TC RD(copied) RA rcode
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(answers.length, 6);
  const records = answers.map((r) => {
    const data = rdata(r);
    const owner = r.owner === undefined ? Buffer.from([0xc0, 0x0c]) : encodeName(r.owner); // the question's name, or another
    const fixed = Buffer.alloc(10);
    fixed.writeUInt16BE(TYPES[r.type]!, 0);
    fixed.writeUInt16BE(1, 2);
    fixed.writeUInt32BE(r.ttl ?? 300, 4);
    fixed.writeUInt16BE(data.length, 8);
    return Buffer.concat([owner, fixed, data]);
  });
  return Buffer.concat([header, query.subarray(12, questionEnd), ...records]);
}

/** The PTR name of an address, as a zone key. */
export function ptrName(ip: string): string {
  if (!isIPv4(ip)) throw new Error('IPv4 only here');
  return `${ip.split('.').reverse().join('.')}.in-addr.arpa`;
}
