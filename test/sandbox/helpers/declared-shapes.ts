/**
 * What scripts/postern.d.ts declares, read with the TypeScript compiler's own checker (TypeScript 7's API), as plain
 * data a script can walk at run time: each context type resolved to objects, arrays, tuples, unions and primitives
 * (aliases, `Omit`, mapped types and `extends` flattened by the checker, as an author's editor sees them). A test
 * built on it follows the typings as they change.
 */
import { mkdtempSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SyntaxKind, type Node } from 'typescript/unstable/ast';
import type { HookName } from '../../../engine/sandbox/api/index.ts';
import { API, SignatureKind, SymbolFlags, TypeFlags, type Checker, type Type, type TypeReference, type TupleType } from 'typescript/unstable/sync';

/** Each hook's context type, as postern.d.ts names it. */
export const CONTEXT_TYPE: Readonly<Record<HookName, string>> = {
  connect: 'ConnectContext', helo: 'HeloContext', auth: 'AuthContext', mailfrom: 'MailFromContext',
  rcptto: 'RcptToContext', data: 'DataContext', predelivery: 'PredeliveryContext',
};

export type Shape =
  | { k: 'string' | 'number' | 'boolean' | 'null' | 'undefined' | 'function' | 'unknown' }
  | { k: 'literal'; v: string | number | boolean }
  | { k: 'array'; readonly: boolean; of: Shape }
  | { k: 'tuple'; readonly: boolean; of: Shape[] }
  | { k: 'union'; of: Shape[] }
  | { k: 'object'; name: string; props: DeclaredProperty[]; index: Shape | null };

export interface DeclaredProperty { name: string; optional: boolean; readonly: boolean; shape: Shape }

/**
 * The shapes of `types`, each a name exported by `declare module "postern"` in `dtsPath` or a type expression over
 * them (`P.DnsResult<P.MxRecord>`, `Awaited<ReturnType<P.PosternHelpers["rate"]>>`), checked as scripts/tsconfig.json
 * checks scripts.
 */
export function declaredShapes(dtsPath: string, types: readonly string[]): Record<string, Shape> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-shapes-'));
  const api = new API({ cwd: dir });
  try {
    copyFileSync(dtsPath, join(dir, 'postern.d.ts'));
    // Each type as an alias of a module of its own, read back by its name.
    writeFileSync(join(dir, 'types.ts'), 'import type * as P from "postern";\n' + types.map((t, i) => `export type T${i} = ${/^\w+$/.test(t) ? `P.${t}` : t};\n`).join(''));
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { target: 'es2024', lib: ['es2024'], types: [], strict: true, noEmit: true, module: 'esnext', moduleResolution: 'bundler' },
      files: ['postern.d.ts', 'types.ts'],
    }));
    const project = api.updateSnapshot({ openProject: join(dir, 'tsconfig.json') }).getProject(join(dir, 'tsconfig.json'))!;
    const checker = project.checker;
    const source = project.program.getSourceFile(join(dir, 'types.ts'))!;
    const exports = checker.getExportsOfModule(checker.getSymbolAtLocation(source as unknown as Node)!);
    const out: Record<string, Shape> = {};
    for (const [i, type] of types.entries()) {
      const symbol = exports.find((s) => s.name === `T${i}`)!;
      const declared = checker.getDeclaredTypeOfSymbol(symbol);
      if (declared.flags & TypeFlags.Any) throw new Error(`${dtsPath}: ${type} is not a type of "postern"`);
      out[type] = shapeOf(checker, declared, 0);
    }
    return out;
  } finally {
    api.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function shapeOf(checker: Checker, type: Type, depth: number): Shape {
  if (depth > 20) throw new Error(`type nested too deep: ${checker.typeToString(type)}`);
  const f = type.flags;
  if (f & TypeFlags.Union) {
    const of = unionShapes(checker, (type as unknown as { getTypes(): Type[] }).getTypes(), depth);
    return of.length === 1 ? of[0]! : { k: 'union', of };
  }
  if (f & (TypeFlags.StringLiteral | TypeFlags.NumberLiteral | TypeFlags.BooleanLiteral)) return { k: 'literal', v: (type as unknown as { value: string | number | boolean }).value };
  if (f & TypeFlags.String) return { k: 'string' };
  if (f & TypeFlags.Number) return { k: 'number' };
  if (f & TypeFlags.Boolean) return { k: 'boolean' };
  if (f & TypeFlags.Null) return { k: 'null' };
  if (f & (TypeFlags.Undefined | TypeFlags.Void)) return { k: 'undefined' };
  if (f & (TypeFlags.Unknown | TypeFlags.Any)) return { k: 'unknown' };
  if (f & TypeFlags.Object) {
    if (checker.isTupleType(type)) {
      const target = (type as TypeReference).getTarget() as TupleType;
      return { k: 'tuple', readonly: target.readonly, of: checker.getTypeArguments(type as TypeReference).map((t) => shapeOf(checker, t, depth + 1)) };
    }
    if (checker.isArrayType(type)) {
      const [element] = checker.getTypeArguments(type as TypeReference);
      const readonly = (type as TypeReference).getTarget().getSymbol()?.name === 'ReadonlyArray';
      return { k: 'array', readonly, of: shapeOf(checker, element!, depth + 1) };
    }
    if (checker.getSignaturesOfType(type, SignatureKind.Call).length > 0) return { k: 'function' };
    const index = checker.getIndexInfosOfType(type).find((i) => i.keyType.flags & TypeFlags.String);
    return {
      k: 'object',
      name: checker.typeToString(type),
      props: checker.getPropertiesOfType(type).map((p): DeclaredProperty => {
        const optional = (p.flags & SymbolFlags.Optional) !== 0;
        const readonly = (p.checkFlags & 8 /* CheckFlags.Readonly: a mapped type's */) !== 0 || p.declarations.some((d) => {
          const modifiers = (d.resolve() as { modifiers?: { nodes?: Array<{ kind: number }> } & Array<{ kind: number }> } | undefined)?.modifiers;
          return [...(modifiers?.nodes ?? modifiers ?? [])].some((m) => m.kind === SyntaxKind.ReadonlyKeyword);
        });
        const type = checker.getTypeOfSymbol(p)!;
        // Under strict an optional property's type includes undefined: "may be absent" is `optional` here.
        if (optional && type.flags & TypeFlags.Union) {
          const kept = (type as unknown as { getTypes(): Type[] }).getTypes().filter((m) => !(m.flags & TypeFlags.Undefined));
          const of = unionShapes(checker, kept, depth);
          return { name: p.name, optional, readonly, shape: of.length === 1 ? of[0]! : { k: 'union', of } };
        }
        return { name: p.name, optional, readonly, shape: shapeOf(checker, type, depth + 1) };
      }),
      index: index ? shapeOf(checker, index.valueType, depth + 1) : null,
    };
  }
  throw new Error(`no shape for ${checker.typeToString(type)} (flags ${f})`);
}

/** A union's members; `true | false` (how the checker holds `boolean`) as one `boolean`. */
function unionShapes(checker: Checker, members: readonly Type[], depth: number): Shape[] {
  const isBoolean = (t: Type): boolean => (t.flags & TypeFlags.BooleanLiteral) !== 0;
  const booleans = members.filter(isBoolean);
  const rest = members.filter((t) => !isBoolean(t)).map((t) => shapeOf(checker, t, depth + 1));
  return booleans.length === 2 ? [{ k: 'boolean' }, ...rest] : [...booleans.map((t) => shapeOf(checker, t, depth + 1)), ...rest];
}
