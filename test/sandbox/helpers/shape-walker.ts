/**
 * A policy script that checks, inside the sandbox, its hook's `ctx` against the shape postern.d.ts declares
 * (test/sandbox/helpers/declared-shapes.ts): each property's presence (required, optional), its run-time kind
 * (string, number, boolean, null vs undefined, array vs tuple, plain object vs Date or class instance, bigint),
 * whether what is declared writable can be written, and that the object holds nothing undeclared. It logs
 * `SHAPE <hook> <label> problem <text>` for each problem, `… met <path>=<member>` for the member of each union it met
 * and whether each optional property was there (the run's coverage), then `… done`.
 */
import type { Shape } from './declared-shapes.ts';

/**
 * Plain JavaScript, run in the isolate: walk(value, shape, path, problems, seen) adds what differs to `problems`, and
 * answers false when the value is not even of the shape's kind (what picks the member of a union to report against).
 */
export const SHAPE_WALKER = String.raw`
const describe = (v) => {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') { const p = Object.getPrototypeOf(v); return p === Object.prototype || p === null ? 'an object' : 'a ' + (p.constructor && p.constructor.name) + ' object'; }
  if (typeof v === 'string') return 'string ' + JSON.stringify(v.slice(0, 40));
  return typeof v + ' ' + String(v);
};
const label = (s) => s.k === 'object' ? s.name.slice(0, 40) : s.k === 'literal' ? JSON.stringify(s.v) : s.k;
function walk(v, s, path, problems, seen) {
  const bad = (what) => problems.push(path + ': ' + what);
  const otherKind = (what) => { bad(what); return false; };
  switch (s.k) {
    case 'unknown': return true;
    case 'string': case 'number': case 'boolean': case 'function': case 'undefined':
      if (typeof v !== s.k) return otherKind(describe(v) + ', declared ' + s.k);
      if (s.k === 'number' && !Number.isFinite(v)) bad(String(v) + ', declared a number');
      return true;
    case 'null': return v === null || otherKind(describe(v) + ', declared null');
    case 'literal': return v === s.v || otherKind(describe(v) + ', declared ' + JSON.stringify(s.v));
    case 'union': {
      let best = null;
      for (const member of s.of) {
        const mine = [];
        const sameKind = walk(v, member, path, mine, seen);
        if (mine.length === 0) { (seen[path] ??= {})[label(member)] = true; return true; }
        // Report against the member of the value's own kind (an object's problems, not "declared null").
        const score = sameKind ? mine.length : 1e6;
        if (best === null || score < best.score) best = { score, problems: mine };
      }
      if (best.score >= 1e6) return otherKind(describe(v) + ', declared ' + s.of.map(label).join(' | '));
      problems.push(...best.problems);
      return true;
    }
    case 'array': case 'tuple': {
      if (!Array.isArray(v)) return otherKind(describe(v) + ', declared ' + (s.k === 'array' ? 'an array' : 'a tuple'));
      if (!s.readonly && Object.isFrozen(v)) bad('a frozen array, declared mutable (' + s.k + ' without readonly): an in-place sort() or push() type-checks and throws');
      if (s.k === 'tuple' && v.length !== s.of.length) bad('length ' + v.length + ', declared a tuple of ' + s.of.length);
      for (let i = 0; i < v.length; i++) walk(v[i], s.k === 'array' ? s.of : s.of[i] ?? { k: 'unknown' }, path + '[]', problems, seen);
      return true;
    }
    case 'object': {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return otherKind(describe(v) + ', declared ' + s.name);
      const proto = Object.getPrototypeOf(v);
      if (proto !== Object.prototype && proto !== null) bad(describe(v) + ', declared plain data ' + s.name);
      const declared = new Set();
      for (const p of s.props) {
        declared.add(p.name);
        const d = Object.getOwnPropertyDescriptor(v, p.name);
        if (p.optional) (seen[path + '.' + p.name] ??= {})[d === undefined ? 'absent' : 'present'] = true;
        if (d === undefined) { if (!p.optional) bad('.' + p.name + ' missing, declared required'); continue; }
        if (!p.readonly && ('value' in d ? !d.writable : d.set === undefined)) bad('.' + p.name + ' is read-only, declared writable (no readonly): an assignment type-checks and throws');
        const x = v[p.name];
        if (x === undefined && p.optional) { bad('.' + p.name + ' present as undefined, declared optional (absent)'); continue; }
        walk(x, p.shape, path + '.' + p.name, problems, seen);
      }
      for (const key of Reflect.ownKeys(v)) {
        if (typeof key === 'symbol') { bad('[' + String(key) + '] undeclared'); continue; }
        if (declared.has(key)) continue;
        if (s.index) walk(v[key], s.index, path + '[key]', problems, seen);
        else bad('.' + key + ' is there (' + describe(v[key]) + '), not declared in ' + s.name);
      }
      return true;
    }
  }
  return otherKind('no rule for shape ' + s.k);
}
`;

/**
 * The script of `hook`: walks its ctx against `shape`, reads the data hook's body through `message.text()` (its
 * declared return, Promise<string>; unless `readBody` is false), and returns nothing (the default decides), or with
 * `rejectOnProblem` a reject naming the first problems (what `postern replay` compares). `tag` starts its log lines. `label` names the session:
 * the HELO name once there is one, else the client's port.
 */
export function shapeWalkingScript(hook: string, shape: Shape, opts: { readBody?: boolean; rejectOnProblem?: boolean; tag?: string } = {}): string {
  const { readBody = true, rejectOnProblem = false, tag = 'SHAPE' } = opts;
  return `${SHAPE_WALKER}
const SHAPE = ${JSON.stringify(shape)};
export default async function (ctx) {
  const problems = [];
  const seen = {};
  walk(ctx, SHAPE, 'ctx', problems, seen);
  if (${readBody} && ${JSON.stringify(hook)} === 'data' && ctx.connection.source === 'smtp') {
    const pending = ctx.message.text(16);
    if (!(pending instanceof Promise)) problems.push('ctx.message.text(): ' + describe(pending) + ', declared Promise<string>');
    const body = await pending;
    if (typeof body !== 'string') problems.push('await ctx.message.text(): ' + describe(body) + ', declared string');
  }
  const session = ctx.connection ? (ctx.connection.helo ?? 'port-' + ctx.connection.remotePort) : ctx.session.helo;
  for (const p of problems.slice(0, 200)) log('${tag} ${hook} ' + session + ' problem ' + p.slice(0, 400));
  for (const p of Object.keys(seen)) for (const m of Object.keys(seen[p])) log('${tag} ${hook} ' + session + ' met ' + p + '=' + m);
  log('${tag} ${hook} ' + session + ' done');
  if (${rejectOnProblem} && problems.length > 0) return reject('shape: ' + problems.slice(0, 3).join('; ').slice(0, 300));
}
`;
}
