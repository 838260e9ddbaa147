import { stripTypeScriptTypes } from 'node:module';
const x: number = 1;
console.log(stripTypeScriptTypes('import type { A } from "postern";\nconst a: A = 1;\nexport default function (c: A): void {}\n', { mode: 'strip' }));
try { stripTypeScriptTypes('enum E { A }', { mode: 'strip' }); } catch (e) { console.log('ERR', (e as any).code, (e as Error).message); }
try { stripTypeScriptTypes('const x: = 1;\nfoo(', { mode: 'strip' }); } catch (e) { console.log('ERR', (e as any).code, (e as Error).message); }
try { stripTypeScriptTypes('import { type X } from "postern";\nlet x = <number>1;', { mode: 'strip' , sourceUrl: 'a.ts'}); } catch (e) { console.log('ERR', (e as any).code, (e as Error).message, Object.keys(e as any)); }
