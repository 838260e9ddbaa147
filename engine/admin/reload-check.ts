/**
 * /readyz's reload check. A refused reload leaves the previous generation serving, whole: the server takes
 * mail as before, so it stays ready and the check only carries the reason. Failing readiness took a server that
 * serves fine out of its load balancer's pool, and the same broken edit, deployed to every node, took them all:
 * a configuration typo refused all mail at HAProxy. The refusal is for monitoring to alert on
 * (postern_config_last_reload_failed, `postern status`), not for the load balancer.
 */
import type { ReadinessCheck } from './admin-server.ts';

export function reloadCheck(lastError: readonly string[] | null | undefined): ReadinessCheck {
  return lastError?.length
    ? { ok: true, detail: `last reload refused, the previous configuration serves: ${lastError.join('; ')}` }
    : { ok: true };
}
