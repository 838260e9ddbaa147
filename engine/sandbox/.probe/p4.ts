import { stripTypeScriptTypes } from 'node:module';
for (const src of ['const x: = 1;\nfoo(', '\n\nlet y = 2;\nenum E { A }', 'let q = 1;\n  let x = <number>1;', 'namespace N { export const a = 1 }', 'class A { constructor(private x: number) {} }', 'const a = 1;\nconst b = a < 2 > (3);']) {
try { console.log(JSON.stringify(stripTypeScriptTypes(src, { mode: 'strip' }))); } catch (e) { console.log('---', JSON.stringify((e as Error).message)); console.log(Object.entries(e as any), (e as Error).stack); }
}
