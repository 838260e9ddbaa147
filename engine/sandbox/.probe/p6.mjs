import ivm from 'isolated-vm';
const iso = new ivm.Isolate({ memoryLimit: 32 });
const ctx = await iso.createContext();
await ctx.global.set('hash', new ivm.Callback((s) => 'h:' + s));
await ctx.global.set('globalThis', ctx.global.derefInto());
const cases = {
  ok: 'export default function (c) { return { v: hash(c.x) }; }',
  prom: 'export default async function (c) { await null; return { v: 2 }; }',
  fn: 'export default function (c) { return () => 1; }',
  profn: 'export default async function (c) { return { f: () => 1 }; }',
  throwE: 'export default function (c) {\n  throw new TypeError("bad");\n}',
  throwS: 'export default function (c) { throw "str"; }',
  loop: 'export default function (c) { while(true){} }',
  mloop: 'export default async function (c) { while(true) await null; }',
  never: 'export default function (c) { return new Promise(() => {}); }',
  dyn: 'export default async function (c) { return await import("fs"); }',
  mem: 'export default function (c) { const a = []; while(true) a.push({x: a.length, s: "y".repeat(10)+a.length}); }',
  after: 'export default function (c) { return 42; }',
};
for (const [name, code] of Object.entries(cases)) {
  const t0 = performance.now();
  try {
    const m = await iso.compileModule(code, { filename: `/s/${name}.js` });
    await m.instantiate(ctx, () => { throw new Error('no imports'); });
    await m.evaluate({ timeout: 100 });
    const fn = await m.namespace.get('default', { reference: true });
    const timer = setTimeout(() => console.log('  ...still pending after 1s', name), 1000);
    const r = await Promise.race([
      fn.apply(undefined, [new ivm.ExternalCopy({ x: 'a' }).copyInto()], { timeout: 100, result: { promise: true, copy: true } }),
      new Promise((_, rej) => setTimeout(() => rej(new Error('host race timeout')), 1500)),
    ]);
    clearTimeout(timer);
    console.log(name, 'OK', r, (performance.now() - t0).toFixed(1));
  } catch (e) {
    console.log(name, 'ERR', e?.constructor?.name, JSON.stringify(String(e?.message)), (performance.now() - t0).toFixed(1), 'disposed=', iso.isDisposed);
    if (name === 'throwE') console.log(e.stack);
  }
}
if (process.env.DISPOSE) iso.dispose(); if (!process.env.NOEXIT) process.exit(0);
