/**
 * `store.redis.url`: `redis://…` / `rediss://…` (TCP, TLS), or `unix:///path/to/redis.sock` for a redis-server on the
 * same host (its `unixsocket`), with `?db=N`, `?password=…` and `?username=…` as redis-py reads them (a URL with
 * an empty host cannot carry a user name or password before it). A Unix socket costs the client and
 * redis-server less per round trip than loopback TCP (docs/benchmarks.md, 2026-12-07).
 */

/**
 * What is wrong with a `store.redis.url`, checked as the Redis client will read it (a WHATWG URL, its user
 * name and password percent-decoded, its path a database number), so that `postern check` refuses what
 * `postern serve` could not start with. The messages never repeat the URL: it may hold a password.
 */
export function redisUrlProblem(text: string): string | null {
  if (text.startsWith('unix:')) return unixUrlProblem(text);
  if (!/^rediss?:\/\//.test(text)) return 'expected redis://…, rediss://… or unix:///path/to/redis.sock';
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'not a valid URL (in the user name or password, write # / ? @ : % and spaces percent-encoded, as %23 %2F %3F %40 %3A %25 %20)';
  }
  if (!url.hostname) return 'no host';
  try {
    decodeURIComponent(url.username);
    decodeURIComponent(url.password);
  } catch {
    return 'a % in the user name or password is not followed by two hexadecimal digits (write % itself as %25)';
  }
  if (url.pathname.length > 1 && !/^\/\d+$/.test(url.pathname)) return 'the path after the host must be a database number (/0, /1, …)';
  return null;
}

const UNIX_PARAMETERS = new Set(['db', 'password', 'username']);

function unixUrlProblem(text: string): string | null {
  if (!text.startsWith('unix:///')) return 'a Unix socket is written unix:///path/to/redis.sock (an absolute path, no host)';
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'not a valid URL (in the password, write # & % + and spaces percent-encoded, as %23 %26 %25 %2B %20)';
  }
  if (url.hash) return 'a # in the path or password must be written %23';
  try {
    decodeURIComponent(url.pathname);
  } catch {
    return 'a % in the socket path is not followed by two hexadecimal digits (write % itself as %25)';
  }
  if (url.pathname.endsWith('/')) return 'the path must name the socket, not a folder';
  // The parameter's name is not repeated either: a password written without `password=` would be.
  const keys = [...url.searchParams.keys()];
  if (keys.some((key) => !UNIX_PARAMETERS.has(key))) return 'an unknown parameter (db=, password= and username= are known; & between them)';
  if (new Set(keys).size !== keys.length) return 'a parameter given twice';
  const db = url.searchParams.get('db');
  if (db !== null && !/^\d+$/.test(db)) return 'db= must be a database number (0, 1, …)';
  return null;
}

/** What the Redis client is given: its `url` (TCP, TLS), or for a Unix socket the socket's path and the rest. */
export interface RedisTarget {
  url?: string;
  path?: string;
  database?: number;
  username?: string;
  password?: string;
}

/** A URL redisUrlProblem accepted, as the client's options. */
export function redisTarget(text: string): RedisTarget {
  if (!text.startsWith('unix:')) return { url: text };
  const url = new URL(text);
  const q = url.searchParams;
  return {
    path: decodeURIComponent(url.pathname),
    ...(q.has('db') ? { database: Number(q.get('db')) } : {}),
    ...(q.has('username') ? { username: q.get('username')! } : {}),
    ...(q.has('password') ? { password: q.get('password')! } : {}),
  };
}

/**
 * Whether a Redis URL holds a password (`redis://[user]:password@…`, `unix:///…?password=…`: the configuration file
 * holding it must not be readable by all); an unreadable one holds none that works.
 */
export function redisUrlHasPassword(text: string | undefined): boolean {
  if (text === undefined) return false;
  try {
    const url = new URL(text);
    return url.password !== '' || (text.startsWith('unix:') && (url.searchParams.get('password') ?? '') !== '');
  } catch {
    return false;
  }
}
