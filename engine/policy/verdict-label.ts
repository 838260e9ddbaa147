/** One verdict as text, for comparing two scripts' decisions (shadow scripts, replay) and for logs. */
import type { PredeliveryVerdict, Verdict } from '../sandbox/api/index.ts';
import { FAIL_CLOSED } from './verdict.ts';

/**
 * A verdict as compared and logged: its kind and every option it has, in a fixed order (two verdicts are
 * the same decision when they would give the same reply); `none` when the script returned nothing,
 * `failed` for a failure (fail closed).
 */
export function verdictLabel(v: Verdict | PredeliveryVerdict | undefined): string {
  if (v === undefined) return 'none';
  if (v === FAIL_CLOSED) return 'failed';
  const { verdict, ...options } = v as unknown as Record<string, unknown>;
  const keys = Object.keys(options).sort();
  return keys.length ? `${String(verdict)} ${JSON.stringify(Object.fromEntries(keys.map((k) => [k, options[k]])))}` : String(verdict);
}
