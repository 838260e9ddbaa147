/**
 * Finds line/column positions for script problems: in V8 stack traces, in isolated-vm's compile
 * messages, in Node's type-stripping errors, and (for problems V8 does not locate) in the source itself.
 */

export interface Position {
  line: number;
  column: number;
}

/** The first stack frame inside `file` (`at fn (/path/auth.ts:3:7)` or `at /path/auth.ts:3:7`). */
export function frameIn(stack: string, file: string): Position | null {
  for (const text of stack.split('\n')) {
    if (!/^\s+at /.test(text)) continue;
    let from = 0;
    for (let at = text.indexOf(file + ':', from); at !== -1; at = text.indexOf(file + ':', from)) {
      const m = /^:(\d+):(\d+)/.exec(text.slice(at + file.length));
      if (m) return { line: Number(m[1]), column: Number(m[2]) };
      from = at + 1;
    }
  }
  return null;
}

/**
 * The frames of an error's stack, without the `Name: message` it starts with: a message made of a client's text
 * could hold a line that reads like a frame of the script (the runner does the same in the isolate).
 */
export function stackFrames(stack: string, message: string): string {
  if (message.length === 0) return stack;
  const at = stack.indexOf(message);
  return at >= 0 && at <= 256 ? stack.slice(at + message.length) : stack;
}

/** isolated-vm appends the position to compile errors: `Unexpected token ';' [/path/auth.js:3:13]`. */
export function splitCompileMessage(message: string, file: string): { message: string; position: Position | null } {
  const suffix = ` [${file}:`;
  const at = message.lastIndexOf(suffix);
  if (at !== -1) {
    const m = /^(\d+):(\d+)\]$/.exec(message.slice(at + suffix.length));
    if (m) return { message: message.slice(0, at), position: { line: Number(m[1]), column: Number(m[2]) } };
  }
  return { message, position: null };
}

/**
 * Node decorates type-stripping errors' stacks with the offending line (after a line or two of context,
 * tabs shown as four spaces) and a caret line under it: `:3\n…\n\tlet x = <number>1;\n            ^^^`.
 */
export function strippingErrorPosition(stack: string, source: string): Position | null {
  const lines = stack.split('\n');
  const lineNo = /^[^\n]*:(\d+)$/.exec(lines[0] ?? '');
  const caret = lines.findIndex((l, i) => i > 0 && /^[ \t]*\^+\s*$/.test(l));
  if (!lineNo || caret === -1) return null;
  const line = Number(lineNo[1]);
  const width = lines[caret]!.indexOf('^');
  const text = source.split('\n')[line - 1] ?? '';
  let column = 0;
  for (let shown = 0; column < text.length && shown < width; column++) shown += text[column] === '\t' ? 4 : 1;
  return { line, column: column + 1 };
}

/** Line and column (1-based) of a character offset. */
export function positionAt(source: string, offset: number): Position {
  let line = 1;
  let lineStart = 0;
  for (let i = source.indexOf('\n'); i !== -1 && i < offset; i = source.indexOf('\n', i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return { line, column: offset - lineStart + 1 };
}

/** Best guess at the `import`/`export … from` statement naming `specifier` (V8 only lists specifiers). */
export function importPosition(source: string, specifier: string): Position {
  for (const quote of ['"', "'"]) {
    const literal = source.indexOf(quote + specifier + quote);
    if (literal === -1) continue;
    const before = source.slice(0, literal);
    const keyword = Math.max(before.lastIndexOf('import'), before.lastIndexOf('export'));
    return positionAt(source, keyword === -1 ? literal : keyword);
  }
  return { line: 1, column: 1 };
}

/** Best guess at where the default export is declared. */
export function defaultExportPosition(source: string): Position {
  const m = /\bexport\s+default\b|\bas\s+default\b/.exec(source);
  return m ? positionAt(source, m.index) : { line: 1, column: 1 };
}
