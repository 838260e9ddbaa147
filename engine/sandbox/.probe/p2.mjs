import ivm from 'isolated-vm';
let n = 0;
for (let k = 0; k < 300; k++) {
  const isos = [new ivm.Isolate({ memoryLimit: 32 }), new ivm.Isolate({ memoryLimit: 32 })];
  for (const i of isos) {
    const c = i.createContextSync();
    n += i.compileScriptSync('1+2').runSync(c);
    const m = await i.compileModule('export default function (ctx) { return {a: ctx.x + 1}; }\n', { filename: '/x/auth.js' });
    await m.instantiate(c, () => { throw new Error('no'); });
    await m.evaluate();
  }
  for (const i of isos) i.dispose();
}
console.log(n, process.memoryUsage());
