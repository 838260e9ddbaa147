/** A temporary folder for one test file: created before its tests, removed after them. */
import { before, after } from 'node:test';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ScratchDir {
  /** The folder (set once the file's `before` hooks ran). */
  readonly path: string;
  /** Write `name` into the folder; resolves with its path. */
  file(name: string, content: string | Buffer): Promise<string>;
}

export function useScratchDir(prefix: string): ScratchDir {
  let path = '';
  // Made on first use too: a file's own `before` hook may run before this one, and a file written while
  // the path was still '' would land in the working directory (the repository).
  const ensure = async (): Promise<string> => (path ||= await mkdtemp(join(tmpdir(), prefix)));
  before(ensure);
  after(() => (path ? rm(path, { recursive: true, force: true }) : undefined));
  return {
    get path() {
      if (!path) throw new Error('scratch folder used before the before() hooks ran');
      return path;
    },
    async file(name, content) {
      const p = join(await ensure(), name);
      await writeFile(p, content);
      return p;
    },
  };
}
