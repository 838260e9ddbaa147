/**
 * Binding a policy service's socket: TCP `address:port`, or a unix socket with the mode and owner that
 * Postfix's chroot `private/` directory needs. Used by whichever process owns the listening sockets
 * (the supervisor under `postern serve`, else the single process).
 */
import net from 'node:net';
import { lstatSync, unlinkSync } from 'node:fs';
import { chmod, chown, link, lstat, readFile, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { PolicyServiceConfig } from '../config/schema.ts';
import { listenOwnerOnly } from '../admin/unix-socket-path.ts';
import { privilegedPortHint } from '../config/privileged-ports.ts';

/** A bound service: how to show its address, and how to close it. */
export interface BoundPolicyService {
  server: net.Server;
  /** `127.0.0.1:10040` or `unix:/path`. */
  address: string;
  port: number;
  /**
   * Stop accepting; a unix socket's file is removed only while it is still this one. (server.close() alone would
   * unlink whatever is at the path by then: another process's socket, a file put in its place.)
   */
  close(done?: () => void): void;
}

/**
 * The key a service's open connections are counted under in the supervisor (engine/cluster/shared-counters.ts),
 * beside the SMTP listeners' `<listener> <client IP>` keys: it has no space-separated address, so never one of those.
 */
export function policyConnectionKey(service: string): string {
  return `policy-service:${service}`;
}

export async function listenPolicyService(service: PolicyServiceConfig, server: net.Server): Promise<BoundPolicyService> {
  const fail = (err: Error): Error => new Error(`policy service ${service.name}: cannot listen on ${service.listen}: ${err.message}${privilegedPortHint(service.listen, err)}`);
  if (service.listen.startsWith('unix:')) {
    const path = service.listen.slice(5);
    await removeStaleSocket(path).catch((err: Error) => { throw fail(err); });
    // Bound at a name of its own, then linked to the path: closing a unix socket's server unlinks the name it was
    // bound at, whatever is there by then, so bound at the path itself, a stop deleted another process's socket or a
    // file put in its place. The link also fails rather than replace something made at the path meanwhile.
    const bindAt = privateName(path);
    await unlink(bindAt).catch(() => undefined); // left by a run of this pid killed in between
    // Made 0600, given its group, and only then its mode: with umask 000 a bind-then-chmod left it open to every local
    // user for a moment (a connection made then stays), and a chmod before the chown to this user's group. Linked
    // into place while still this user's, and only then given its owner: Linux's fs.protected_hardlinks refuses a
    // hard link to a socket someone else owns, and a chmod of it, to a server without CAP_FOWNER (a service user
    // with CAP_CHOWN alone, root under a capability bounding set): the start failed with EPERM.
    await bind(server, (cb) => listenOwnerOnly(server, bindAt, cb)).catch((err: Error) => { throw fail(err); });
    let ino: number | undefined;
    try {
      const owner = await userId(service.socket.owner);
      const group = await groupId(service.socket.group);
      if (group !== -1) await chown(bindAt, -1, group).catch(chownFailed);
      await chmod(bindAt, parseInt(service.socket.mode, 8));
      if (bindAt !== path) await link(bindAt, path);
      ino = (await lstat(path)).ino;
      if (owner !== -1) await chown(bindAt, owner, -1).catch(chownFailed);
    } catch (err) {
      server.close();
      // Linked already: the path holds this socket, which will not answer.
      if (ino !== undefined && bindAt !== path) await removeIfStill(path, ino);
      throw fail(err as Error);
    } finally {
      if (bindAt !== path) await unlink(bindAt).catch(() => undefined);
    }
    const close = (done?: () => void): void => {
      server.close(() => done?.());
      const there = lstatSync(path, { throwIfNoEntry: false });
      if (there?.isSocket() && there.ino === ino) unlinkSync(path);
    };
    return { server, address: `unix:${path}`, port: 0, close };
  }
  const sep = service.listen.lastIndexOf(':');
  const host = service.listen.slice(0, sep).replace(/^\[|\]$/g, '');
  await bind(server, (cb) => server.listen(Number(service.listen.slice(sep + 1)), host, cb)).catch((err: Error) => { throw fail(err); });
  const a = server.address() as net.AddressInfo;
  return { server, address: `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`, port: a.port, close: (done) => void server.close(() => done?.()) };
}

/**
 * The name a unix socket is bound at before it is linked to `path`: beside it (a link cannot cross file systems),
 * this process's own. `path` itself when that name would be too long for bind() (the old way: a stop then removes
 * whatever is at the path).
 */
function privateName(path: string): string {
  const name = join(dirname(path), `.${basename(path)}.${process.pid}`);
  return Buffer.byteLength(name) > MAX_SOCKET_PATH_BYTES ? path : name;
}

/** The longest unix socket path bind(2) takes: sun_path holds it with its NUL (108 bytes on Linux, 104 on the BSDs and macOS). */
const MAX_SOCKET_PATH_BYTES = process.platform === 'linux' ? 107 : 103;

/**
 * What would stop listenPolicyService from making a unix socket, found without binding (a start, a reload and
 * `postern check` build through here: generation/build-generation.ts): its folder missing, something else than
 * a socket at its path, an owner or group no one has. Each with the `socket` key it is about. A live server's
 * own socket at the path is fine (removeStaleSocket tells a live one apart only when binding).
 */
export async function policySocketProblems(service: PolicyServiceConfig): Promise<Array<{ key: string[]; message: string }>> {
  if (!service.listen.startsWith('unix:')) return [];
  const path = service.listen.slice(5);
  const out: Array<{ key: string[]; message: string }> = [];
  const folder = await stat(dirname(path)).catch((err: NodeJS.ErrnoException) => err.code ?? 'EIO');
  if (typeof folder === 'string' || !folder.isDirectory()) {
    out.push({ key: ['listen'], message: `cannot listen on ${service.listen}: folder ${dirname(path)} ${typeof folder === 'string' ? `cannot be used (${folder})` : 'is not a folder'}` });
  }
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
    out.push({ key: ['listen'], message: `cannot listen on ${service.listen}: the path is ${Buffer.byteLength(path)} bytes, longer than the ${MAX_SOCKET_PATH_BYTES} a unix socket's may be (bind fails with EINVAL): use a shorter one` });
  }
  const there = await lstat(path).catch(() => null);
  if (there && !there.isSocket()) out.push({ key: ['listen'], message: `cannot listen on ${service.listen}: ${path} exists and is not a socket` });
  for (const [key, id] of [['owner', () => userId(service.socket.owner)], ['group', () => groupId(service.socket.group)]] as const) {
    await id().catch((err: Error) => out.push({ key: ['socket', key], message: err.message }));
  }
  return out;
}

function bind(server: net.Server, listen: (cb: () => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    listen(() => { server.off('error', reject); resolve(); });
  });
}

/** A socket file left by a previous run is removed; anything else at that path is an error, never deleted. */
async function removeStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch(() => null);
  if (!st) return;
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  // Only if nothing answers there: a second server on the same path must not steal it.
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path, () => { probe.destroy(); resolve(true); });
    probe.on('error', () => resolve(false));
  });
  if (alive) throw new Error(`another process is listening on ${path}`);
  await unlink(path);
}

/** A chown refused for want of privilege: which settings work without it. */
function chownFailed(err: NodeJS.ErrnoException): never {
  if (err.code !== 'EPERM') throw err;
  // The systemd unit grants no CAP_CHOWN: say which settings work without it.
  throw new Error(`${err.message}: changing the socket's owner or group needs root or CAP_CHOWN; leave socket.owner out and give the socket a group this user is in, or one its folder gives (set-group-ID: docs/postfix-policy.md)`);
}

/** Unlink `path` if it is still the file `ino` (never what another process put there meanwhile). */
async function removeIfStill(path: string, ino: number): Promise<void> {
  const there = await lstat(path).catch(() => null);
  if (there?.isSocket() && there.ino === ino) await unlink(path).catch(() => undefined);
}

/** -1 leaves the owner (or group) as it is. */
async function userId(name: string | undefined): Promise<number> {
  return name === undefined ? -1 : idFrom('/etc/passwd', name, 'user');
}
async function groupId(name: string | undefined): Promise<number> {
  return name === undefined ? -1 : idFrom('/etc/group', name, 'group');
}

async function idFrom(file: string, name: string, what: string): Promise<number> {
  if (/^\d+$/.test(name)) return Number(name);
  const line = (await readFile(file, 'utf8')).split('\n').find((l) => l.split(':')[0] === name);
  const id = line?.split(':')[2];
  if (id === undefined) throw new Error(`no ${what} named ${name} in ${file}`);
  return Number(id);
}
