/**
 * `postern replay`: run candidate scripts over recorded script calls (recorder.ts) and report the
 * decisions that would change, grouped by hook and old → new verdict, with a few examples each. Builds
 * its own generation from the configuration with the candidate folder as every listener's scripts (and,
 * given one, a candidate for the policy services'), each call run with the scripts of the listener or
 * policy service it was recorded on (the
 * same buildGeneration as start, reload and check), with counters in this process's memory: it never
 * talks to the running server, its spool or its store.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import type { LoadedConfig } from '../config/load-config.ts';
import { buildGeneration } from '../generation/build-generation.ts';
import { checkVerdict } from '../policy/verdict.ts';
import { verdictLabel } from '../policy/verdict-label.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import { MemoryCounterStore } from '../store/index.ts';
import type { Logger } from '../logging/logger.ts';
import type { HookName } from '../sandbox/api/index.ts';
import { recordingFiles, dayOf, sourceOf, type ConnectionSource, type Recording } from './recording-files.ts';
import type { ListenerConfig } from '../config/schema.ts';
import { isHookName } from '../sandbox/hooks.ts';
import { closeMessageText, openMessageText } from '../sandbox/message-texts.ts';
import { ScriptFailure, unrecoverableReasons, type Sandbox } from '../sandbox/index.ts';
import { afterTimeout } from './overdue-calls.ts';

export interface ReplayOptions {
  /** The candidate scripts folder: it stands in for the top-level scripts and every listener's. */
  scripts: string;
  /**
   * The candidate for the policy services' scripts. Without it a policy service with a `scripts` folder of
   * its own is replayed with that folder (a candidate for the listeners is not one for it); one without
   * inherits the top-level scripts, and so `scripts`.
   */
  policyScripts?: string;
  /** Only calls at or after this time (ms since the epoch). */
  since?: number;
  hook?: HookName;
  /** Examples kept per group. */
  examples?: number;
}

export interface ReplayExample { time: string; connectionId: string | null; listener: string | null; source: ConnectionSource | null; identity: string | null; address: string | null; old: string; new: string }

export interface ReplayGroup { hook: HookName; from: string; to: string; count: number; examples: ReplayExample[] }

export interface ReplaySummary {
  /** Recorded calls looked at. */
  decisions: number;
  /** Of those, how many the candidate decides differently. */
  changed: number;
  /** Recorded lines that could not be read (a crash mid-write). */
  unreadable: number;
  /** Data-hook calls whose candidate read the body (ctx.message.text()), which is not recorded: not compared. */
  unreplayable: number;
  groups: ReplayGroup[];
  /**
   * Set when replay stopped early: a candidate's call could not be stopped (a step V8 cannot interrupt), which
   * parks an isolate thread for good. `at`: the record whose call it was, when known. The counts are up to it.
   */
  stopped?: { reason: string; at: ReplayExample | null };
}

export async function replay(loaded: LoadedConfig, logger: Logger, options: ReplayOptions): Promise<ReplaySummary> {
  // Every call on an isolate thread (as postern try's): a candidate stuck in a step V8 cannot interrupt is then
  // cut off at its deadline and counted as failed, instead of holding this process's own thread until isolated-vm
  // gives up on it and the process dies (SIGSEGV, nothing printed).
  const config = {
    ...loaded.config, scripts: options.scripts, sandbox: { ...loaded.config.sandbox, fastPathMs: 0 },
    listeners: loaded.config.listeners.map((l) => ({ ...l, scripts: options.scripts, shadowScripts: undefined })),
    policyServices: loaded.config.policyServices.map((p) => (options.policyScripts ? { ...p, scripts: options.policyScripts } : p)),
  };
  const { generation } = await buildGeneration({ ...loaded, config }, { logger, store: new MemoryCounterStore() });
  const summary: ReplaySummary = { decisions: 0, changed: 0, unreadable: 0, unreplayable: 0, groups: [] };
  const groups = new Map<string, ReplayGroup>();
  const keep = options.examples ?? 3;
  try {
    const fromDay = options.since === undefined ? '' : dayOf(options.since);
    /** The last record whose call the sandbox had to give up on while it ran. */
    let givenUp: ReplayExample | null = null;
    // The process's earlier signals (a replay run inside another command) are not this replay's.
    const reasonsBefore = unrecoverableReasons().length;
    files: for (const file of recordingFiles(loaded.config.dataDir)) {
      if (file.day < fromDay) continue;
      const lines = createInterface({ input: createReadStream(file.path, 'utf8'), crlfDelay: Infinity });
      for await (const line of lines) {
        if (!line) continue;
        const r = readRecording(line);
        if (!r) { summary.unreadable++; continue; }
        if (options.since !== undefined && Date.parse(r.t) < options.since) continue;
        if (options.hook && r.hook !== options.hook) continue;
        // isolated-vm's word may come after the call that caused it (it gives a thread 5 s): stop at the next record.
        if (unrecoverableReasons().length > reasonsBefore) { summary.stopped = { reason: unrecoverableReasons()[reasonsBefore]!, at: givenUp }; break files; }
        const sandbox = generation.sandboxFor(placeOf(generation, r));
        const abandonedBefore = sandbox.abandoned;
        const { label: now, timedOut } = await candidateVerdict(sandbox, r);
        const example = (label: string): ReplayExample => ({ time: r.t, connectionId: r.cid, listener: r.listener, source: r.listener === null ? null : r.source ?? sourceOf(r.ctx), identity: identityOf(r), address: addressOf(r), old: r.verdict, new: label });
        if (now === UNREPLAYABLE) {
          summary.unreplayable++;
        } else {
          summary.decisions++;
          if (now !== r.verdict) {
            summary.changed++;
            const from = kind(r.verdict);
            const to = kind(now);
            const key = `${r.hook}\n${from}\n${to}`;
            let g = groups.get(key);
            if (!g) groups.set(key, g = { hook: r.hook, from, to, count: 0, examples: [] });
            g.count++;
            if (g.examples.length < keep) g.examples.push(example(now));
          }
        }
        if (!timedOut) continue;
        const parked = await afterTimeout(sandbox, abandonedBefore, reasonsBefore);
        if (sandbox.abandoned > abandonedBefore) givenUp = example(now === UNREPLAYABLE ? 'failed' : now);
        if (parked) { summary.stopped = { reason: unrecoverableReasons()[reasonsBefore]!, at: givenUp }; break files; }
      }
    }
  } finally {
    await generation.dispose();
  }
  summary.groups = [...groups.values()].sort((a, b) => b.count - a.count);
  return summary;
}

/**
 * One recorded line, or null when it is not a whole record: a line cut short by a crash, or a file edited
 * or damaged by hand (any JSON value can be on a line: each field is checked before it is used).
 */
function readRecording(line: string): Recording | null {
  let r: unknown;
  try { r = JSON.parse(line); } catch { return null; }
  if (typeof r !== 'object' || r === null || Array.isArray(r)) return null;
  const o = r as Record<string, unknown>;
  const ok = typeof o.t === 'string' && !Number.isNaN(Date.parse(o.t)) && typeof o.hook === 'string' && isHookName(o.hook)
    && typeof o.ctx === 'object' && o.ctx !== null && !Array.isArray(o.ctx) && typeof o.verdict === 'string'
    && (o.listener === null || typeof o.listener === 'string') && (o.cid === null || typeof o.cid === 'string')
    && (o.source === undefined || o.source === null || o.source === 'smtp' || o.source === 'postfix-policy');
  return ok ? (o as unknown as Recording) : null;
}

const UNREPLAYABLE = Symbol('unreplayable');
const NOT_RECORDED = 'message.text(): message bodies are not recorded for replay';

/**
 * The listener or policy service a call was recorded on, by its kind and name (a listener and a policy
 * service may share a name); undefined, and so the top-level scripts, for predelivery or a place that is
 * gone from the configuration.
 */
function placeOf(generation: PolicyGeneration, r: Recording): Pick<ListenerConfig, 'scripts'> | undefined {
  if (r.listener === null) return undefined;
  const source = r.source ?? sourceOf(r.ctx);
  const places: ReadonlyArray<{ name: string; scripts?: string }> = source === 'postfix-policy' ? generation.config.policyServices : generation.config.listeners;
  return places.find((p) => p.name === r.listener);
}

/** The candidate's verdict on a recorded call, and whether its call ran out of time. */
async function candidateVerdict(sandbox: Sandbox, r: Recording): Promise<{ label: string | typeof UNREPLAYABLE; timedOut: boolean }> {
  if (!sandbox.has(r.hook)) return { label: 'none', timedOut: false };
  // The recorded body token is long closed: a candidate that reads the body gets an error, and its call is
  // not compared, whatever it then decides (it decided without the body).
  let bodyRead = false;
  const token = r.hook === 'data' ? openMessageText(() => { bodyRead = true; throw new Error(NOT_RECORDED); }) : null;
  const ctx = token === null ? r.ctx : { ...r.ctx, message: { ...(r.ctx.message as object | undefined), token } };
  try {
    const verdict = await sandbox.invoke(r.hook, ctx, r.cid);
    return { label: bodyRead ? UNREPLAYABLE : verdictLabel(checkVerdict(r.hook, verdict)), timedOut: false };
  } catch (e) {
    return { label: bodyRead ? UNREPLAYABLE : 'failed', timedOut: e instanceof ScriptFailure && e.kind === 'timeout' };
  } finally {
    if (token !== null) closeMessageText(token);
  }
}

/** The verdict without its options: a group is `accept → reject`, whatever the texts. */
const kind = (label: string): string => label.split(' ')[0]!;

function identityOf(r: Recording): string | null {
  const c = r.ctx.connection as { auth?: { username?: string } | null; certificateIdentity?: string | null } | undefined;
  const s = r.ctx.session as { authenticatedUser?: string | null } | undefined;
  return c?.auth?.username ?? c?.certificateIdentity ?? s?.authenticatedUser ?? null;
}

function addressOf(r: Recording): string | null {
  const a = r.ctx.address as { address?: string } | null | undefined;
  if (a?.address !== undefined) return a.address;
  const t = r.ctx.transaction as { sender?: { address: string } | null } | undefined;
  if (t?.sender) return t.sender.address;
  const m = r.ctx.message as { recipients?: string[] } | undefined;
  return m?.recipients?.join(',') ?? null;
}
