/**
 * `postern pki …` and `postern pins …` run as their command's own function in this process (engine/cli/pki.ts,
 * pins.ts), with the defaults the command line gives them (engine/cli/main.ts): for the further runs of a case
 * whose claim is not about the process (a kill, another user, an environment of disk faults), ~0.4 s of CPU less each.
 */
import { runInProcess } from '../helpers/cli-in-process.ts';
import type { CliResult } from '../helpers/cli.ts';
import { pkiCrlCommand, pkiInitCommand, pkiIssueCommand, pkiListCommand, pkiRevokeCommand } from '../../engine/cli/pki.ts';
import { pinsAddCommand, pinsLearnCommand, pinsListCommand, pinsRemoveCommand } from '../../engine/cli/pins.ts';

interface Where { config?: string; dir?: string }

export const here = {
  init: (dir: string, opts: { days?: string; crlDays?: string } = {}): Promise<CliResult> =>
    runInProcess(() => pkiInitCommand({ dir, name: 'Postern Mail CA', days: '3650', key: 'ecdsa-p256', crlDays: '365', ...opts })),
  issue: (identity: string, opts: Where & { device?: string; key?: string; p12PasswordFile?: string; out?: string; json?: boolean }): Promise<CliResult> =>
    runInProcess(() => pkiIssueCommand(identity, { device: 'device', days: '730', key: 'ecdsa-p256', email: [], ...opts })),
  revoke: (what: string, opts: Where & { device?: string; all?: boolean; reason?: string; json?: boolean }): Promise<CliResult> =>
    runInProcess(() => pkiRevokeCommand(what, opts)),
  list: (opts: Where & { json?: boolean }): Promise<CliResult> => runInProcess(() => pkiListCommand(opts)),
  crl: (opts: Where & { json?: boolean }): Promise<CliResult> => runInProcess(() => pkiCrlCommand(opts)),
  pinsAdd: (identity: string, certOrPin: string, opts: { config?: string; listener?: string; device?: string; json?: boolean; force?: boolean }): Promise<CliResult> =>
    runInProcess(() => pinsAddCommand(identity, certOrPin, opts)),
  pinsRemove: (what: string, opts: { config?: string; device?: string; json?: boolean }): Promise<CliResult> =>
    runInProcess(() => pinsRemoveCommand(what, opts)),
  pinsList: (opts: { config?: string; json?: boolean }): Promise<CliResult> => runInProcess(() => pinsListCommand(opts)),
  pinsLearn: (id: string, identity: string | undefined, opts: { config?: string; device?: string; log?: string; yes?: boolean; json?: boolean; force?: boolean }): Promise<CliResult> =>
    runInProcess(() => pinsLearnCommand(id, identity, opts)),
};

/** Its --json output, as posternJson: the command must succeed. */
export async function hereJson<T>(run: Promise<CliResult>): Promise<T> {
  const r = await run;
  if (r.code !== 0) throw new Error(`exited ${r.code}: ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}
