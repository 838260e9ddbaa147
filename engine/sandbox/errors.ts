/**
 * The two ways a policy script goes wrong: a ScriptError when it is loaded (it can never run) and a
 * ScriptFailure when one call fails (that call fails closed). Both carry the file and position.
 */
import type { HookName } from './api/index.ts';

/** A script that cannot be loaded: syntax, stripping, imports, top level, missing default export. */
export class ScriptError extends Error {
  readonly file: string;
  /** 1-based; 1:1 when the problem concerns the file as a whole. */
  readonly line: number;
  readonly column: number;

  constructor(file: string, line: number, column: number, message: string) {
    super(message);
    this.name = 'ScriptError';
    this.file = file;
    this.line = line;
    this.column = column;
  }

  /** `file:line:column: message`, the form editors and `postern check` understand. */
  override toString(): string {
    return `${this.file}:${this.line}:${this.column}: ${this.message}`;
  }
}

/** Every problem found in a set of scripts, so one run of `postern check` reports them all. */
export class ScriptErrors extends AggregateError {
  declare readonly errors: ScriptError[];

  constructor(errors: readonly ScriptError[]) {
    super([...errors], errors.map((e) => e.toString()).join('\n'));
    this.name = 'ScriptErrors';
  }

  override toString(): string {
    return this.message;
  }
}

/** `fenced`: not run at all, its script is fenced (engine/cluster/fence-book.ts) until the file changes. */
export type FailureKind = 'error' | 'timeout' | 'memory' | 'fenced';

/** One call failed — threw, ran out of time or memory, or returned something that is not plain data. */
export class ScriptFailure extends Error {
  readonly kind: FailureKind;
  readonly hook: HookName;
  readonly file: string;
  /** Where the script threw (or was stopped, for timeouts) when the stack says so; null otherwise. */
  readonly line: number | null;
  readonly column: number | null;

  constructor(kind: FailureKind, hook: HookName, file: string, line: number | null, column: number | null, message: string) {
    super(message);
    this.name = 'ScriptFailure';
    this.kind = kind;
    this.hook = hook;
    this.file = file;
    this.line = line;
    this.column = column;
  }

  override toString(): string {
    const at = this.line === null ? this.file : `${this.file}:${this.line}:${this.column}`;
    return `${at}: ${this.kind === 'error' ? '' : `${this.kind}: `}${this.message}`;
  }
}
