/** A Lua script for Redis, sent by its SHA1 (EVALSHA) and by its text only when Redis does not have it. */
import { createHash } from 'node:crypto';

export interface LuaScript { readonly text: string; readonly sha: string }

export const luaScript = (text: string): LuaScript => ({ text, sha: createHash('sha1').update(text).digest('hex') });

/** Runs a script with its keys and arguments: one round trip, bounded by the store's time limit. */
export type RunScript = (script: LuaScript, keys: readonly string[], args: readonly string[]) => Promise<unknown>;
