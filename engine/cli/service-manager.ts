/**
 * sd_notify(3) for `Type=notify` (examples/systemd/postern.service): READY=1 once the server is started (every
 * listener bound, every worker and the queue process ready), STOPPING=1 when a stop begins, so that units ordered
 * after postern.service start when it answers, and `systemctl start` returns then. Only with NOTIFY_SOCKET set
 * (by systemd). Node has no unix datagram sockets: the message goes through systemd-notify(1), which waits until
 * systemd has taken it; it runs as a child process, so the unit needs `NotifyAccess=all`.
 */
import { spawn } from 'node:child_process';
import type { Logger } from '../logging/logger.ts';

export function notifyServiceManager(state: 'READY=1' | 'STOPPING=1', log: Logger): Promise<void> {
  if (!process.env.NOTIFY_SOCKET) return Promise.resolve();
  return new Promise((resolve) => {
    const child = spawn('systemd-notify', [state], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    // Never fatal: a service manager that missed READY=1 ends the start at its own timeout (TimeoutStartSec).
    const failed = (why: string): void => log.error({ state, notifySocket: process.env.NOTIFY_SOCKET }, `the service manager was not told ${state}: ${why}`);
    child.once('error', (err) => { failed(`systemd-notify: ${err.message}`); resolve(); });
    child.once('close', (code) => { if (code !== 0 && code !== null) failed(`systemd-notify exited ${code}: ${stderr.trim()}`); resolve(); });
  });
}
