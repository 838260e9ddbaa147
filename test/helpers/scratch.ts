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
  before(async () => { path = await mkdtemp(join(tmpdir(), prefix)); });
  after(() => rm(path, { recursive: true, force: true }));
  return {
    get path() { return path; },
    async file(name, content) {
      const p = join(path, name);
      await writeFile(p, content);
      return p;
    },
  };
}
