/**
 * `postern replay --scripts DIR`: what candidate scripts would have decided on the recorded traffic
 * (engine/replay/). Exit 0 when no decision changes, 1 when some do, 3 when it cannot run or had to stop (a
 * candidate's call that could not be stopped: the counts printed are up to it).
 */
import { loadStartConfig } from '../config/start-config.ts';
import { ConfigError } from '../config/config-error.ts';
import { GenerationError } from '../generation/build-generation.ts';
import { clientText, createLogger } from '../logging/logger.ts';
import { isHookName } from '../sandbox/hooks.ts';
import { replay, type ReplaySummary } from '../replay/replay.ts';

export interface ReplayCliOptions { config?: string; scripts: string; policyScripts?: string; since?: string; hook?: string; json?: boolean; examples?: string }

export async function replayCommand(opts: ReplayCliOptions): Promise<number> {
  try {
    if (opts.hook !== undefined && !isHookName(opts.hook)) throw new Error(`unknown hook ${JSON.stringify(opts.hook)}`);
    const loaded = loadStartConfig({ configPath: opts.config });
    if (!loaded.config.replay) process.stderr.write('note: the configuration has no `replay` section: nothing new is being recorded\n');
    const summary = await replay(loaded, createLogger('silent'), {
      scripts: opts.scripts, policyScripts: opts.policyScripts, hook: opts.hook, since: opts.since === undefined ? undefined : since(opts.since),
      examples: opts.examples === undefined ? undefined : Number(opts.examples),
    });
    process.stdout.write(opts.json ? `${JSON.stringify(summary, null, 2)}\n` : asText(summary));
    if (summary.stopped) {
      const at = summary.stopped.at;
      process.stderr.write(`postern replay: stopped: a candidate's call could not be stopped (${summary.stopped.reason})${at ? `, on the call recorded at ${shown(at.time)} (${shown(at.connectionId ?? '-')}, address=${shown(at.address ?? '-')})` : ''}; a server running it would lose its worker process to such a call: fix the candidate and replay again\n`);
      return 3;
    }
    return summary.changed ? 1 : 0;
  } catch (err) {
    if (err instanceof GenerationError) for (const line of err.lines) process.stderr.write(`${line}\n`);
    else process.stderr.write(`postern replay: ${err instanceof ConfigError ? err.message : (err as Error).message}\n`);
    return 3;
  }
}

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** The time `--since` names; one before 1970 is 1970 (every recording): further back it was no date ("Invalid time value"). */
const since = (text: string): number => Math.max(0, Date.now() - duration(text));

/** `90m`, `24h`, `7d` → milliseconds. */
export function duration(text: string): number {
  const m = /^(\d+)\s*([smhd])$/.exec(text.trim());
  if (!m) throw new Error(`--since ${JSON.stringify(text)}: expected a number and a unit, e.g. 90m, 24h, 7d`);
  return Number(m[1]) * UNITS[m[2]!]!;
}

/**
 * What a recording holds, for the terminal: verdict texts (a script's, which may quote a client) and the
 * recorded client facts, with what a terminal would act on or show as something else as `\u{…}`, as the log has it.
 */
const shown = (value: string): string => clientText(value, Infinity);

function asText(s: ReplaySummary): string {
  const out = [`${s.decisions} recorded decision${s.decisions === 1 ? '' : 's'}, ${s.changed} would change`];
  if (s.unreplayable) out.push(`(${s.unreplayable} data-hook call${s.unreplayable === 1 ? '' : 's'} not compared: the candidate reads the body, which is not recorded)`);
  if (s.unreadable) out.push(`(${s.unreadable} unreadable recorded line${s.unreadable === 1 ? '' : 's'} skipped)`);
  for (const g of s.groups) {
    out.push('', `${g.hook}: ${g.from} → ${g.to}: ${g.count}`);
    for (const e of g.examples) {
      out.push(`  ${shown(e.time)} ${shown(e.connectionId ?? '-')}${e.listener ? ` ${e.source === 'postfix-policy' ? 'policy service ' : ''}${shown(e.listener)}` : ''} identity=${shown(e.identity ?? '-')} address=${shown(e.address ?? '-')}`);
      out.push(`    was ${shown(e.old)}`, `    now ${shown(e.new)}`);
    }
  }
  return `${out.join('\n')}\n`;
}
