/**
 * What the supervisor reads of its children's messages, checked before it acts on one: the fields it reads or keeps,
 * of the types it takes them for. A child is Postern's own code, but a bug, or a child of another release (a package
 * upgraded under a running server: the next replacement runs the new code), may send a field missing or of another
 * type; the supervisor acted on it as it came, and a 'conn+' without its key, a 'conn-' whose keys were no list or a
 * 'reload-state' without its state threw in its event loop (or later, from what it had kept) and took it down, and
 * every process of the server with it. A message of a kind it does not know is no problem: it is not read.
 */

type Check = (value: unknown) => boolean;

const string: Check = (v) => typeof v === 'string';
const number: Check = (v) => typeof v === 'number' && Number.isFinite(v);
const anyNumber: Check = (v) => typeof v === 'number';
const strings: Check = (v) => Array.isArray(v) && v.every(string);
const object: Check = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
const optional = (check: Check): Check => (v) => v === undefined || check(v);
const nullable = (check: Check): Check => (v) => v === null || check(v);
const recordOf = (check: Check): Check => (v) => object(v) && Object.values(v as object).every(check);
/**
 * prom-client's metrics as JSON (registry.getMetricsAsJSON), which the supervisor merges for /metrics: a list of
 * named metrics, each with its list of samples (a sample's value may come as null: NaN is sent so, as JSON has none).
 */
const metrics: Check = (v) => Array.isArray(v) && v.every((m) => object(m) && string(m.name) && Array.isArray(m.values) && (m.values as unknown[]).every(object));
const fields = (shape: Record<string, Check>): Check => (v) => object(v) && Object.entries(shape).every(([key, check]) => check((v as Record<string, unknown>)[key]));

/** A child's reload state (reload-coordinator.ts ChildReloadState), kept and read at every status. */
const reloadState = fields({
  generation: number, digest: string, refused: nullable(string), lastError: nullable(strings), reloads: number,
  pid: optional(number), checks: optional(number), supersededBuilds: optional(number),
  warnings: optional((v) => Array.isArray(v) && v.every(fields({ message: string, listener: optional(string) }))),
  files: optional(recordOf(string)),
});

/** By kind (`t`), the fields the supervisor reads. ('store' messages: StoreHost checks each call.) */
const SHAPES: Record<string, Record<string, Check>> = {
  // Its figures are read with `?? 0` (NaN comes as null): only what /readyz reads later is checked.
  hb: { got: optional(nullable(anyNumber)), elu: optional(nullable(anyNumber)), cpu: optional(nullable(anyNumber)), store: optional(recordOf(strings)), spoolUnconfirmedMs: optional(nullable(anyNumber)) },
  listened: { listener: string },
  full: {},
  'metrics-r': { q: number, metrics: optional(nullable(metrics)) },
  'metrics-last': { metrics: optional(metrics) },
  draining: { reason: optional(string) },
  'reload-state': { state: reloadState },
  spooled: { ids: strings, dir: string },
  // A slot's key: "<listener> <client address>", or a policy service's ("policy-service:<name>").
  'conn+': { q: number, key: string, ip: optional(string), limit: optional(number) },
  'conn-': { keys: optional(strings), key: optional(string), s: optional(number) },
  'lease-table': { keys: strings },
  authfail: { ip: string, at: number },
  store: { q: number, ops: Array.isArray },
};

/** Why the supervisor cannot act on `message` (the first field that is not as it reads it), or null when it can. */
export function unreadableChildMessage(message: unknown): string | null {
  if (!object(message)) return 'not an object';
  const m = message as Record<string, unknown>;
  if (m.t !== undefined && !string(m.t)) return 'its kind (t) is not a string';
  const t = m.t as string | undefined;
  if (t === undefined || !Object.hasOwn(SHAPES, t)) return null;
  for (const [key, check] of Object.entries(SHAPES[t]!)) if (!check(m[key])) return `${t}: ${key} is ${describe(m[key])}`;
  if (t === 'conn-' && m.keys === undefined && m.key === undefined) return 'conn-: neither keys nor key';
  return null;
}

/** A value as a log line says it: its type, not its content (which may be anything, of any size). */
function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (value === null) return 'null';
  return `${Array.isArray(value) ? 'a list' : `a value of type ${typeof value}`} not of the kind expected`;
}
