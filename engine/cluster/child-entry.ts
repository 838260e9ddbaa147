/**
 * Entry of a child process of the supervisor: the signals a process group gets and the children ignore (SIGHUP: the
 * supervisor tells every child to reload; SIGUSR2: log rotation, nothing to reopen) are handled from the first
 * instruction, before child.ts and its module graph load (a good part of a second). Handled only by child.ts, they met
 * their default action meanwhile, which ends the process: a terminal's hangup or a `kill -USR2 -- -PGID` during the
 * server's start failed it (`worker process 0 could not start (signal SIGHUP)`), and later cost a worker being replaced.
 */
for (const signal of ['SIGHUP', 'SIGUSR2'] as const) process.on(signal, () => undefined);
await import('./child.ts');
