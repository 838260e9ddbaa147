/**
 * The shape of postern.yaml, with a description and default on every key. The descriptions are the
 * configuration reference: `postern config describe` prints them and docs/configuration.md's key tables are
 * generated from them (`npm run docs:config`), so they are written for the reader of those tables (Markdown).
 * .meta() hints for the reference: `format` (what a string is), `unit`, `defaultText` (see describe.ts).
 * Paths stay as written here; the loader resolves them against the configuration file's folder.
 */
import { DEFAULT_SYNC_DEADLINE_MS, MAX_SYNC_DEADLINE_MS, MIN_SYNC_DEADLINE_MS } from '../spool/sync-deadline.ts';
import { isIP } from 'node:net';
import { z } from './zod.ts';
import { parseCidr } from '../proxy-protocol/trusted-proxies.ts';
import { isDnsServer } from '../dns/script-dns.ts';
import { redisUrlProblem } from '../store/redis-url.ts';
import { isLocalDomain } from './local-domain.ts';
import { MAX_TIMER_MS } from '../timing/timer-limit.ts';

/** A file or folder; relative paths are resolved against the configuration file's folder. */
const path = () => z.string().meta({ format: 'path' });
/** A DNS server as node:dns's setServers() takes it (it throws on anything else, at the first lookup). */
const dnsServer = () => z.string().refine(isDnsServer, 'expected an IP address, address:port or [IPv6]:port');
const hostPort = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, 'expected address:port, e.g. 127.0.0.1:2525')
  .meta({ format: '`address:port`' });
const mechanism = z.enum(['EXTERNAL', 'PLAIN', 'LOGIN']);
/**
 * A host name as it goes on the wire (greeting, EHLO, Received): ASCII labels of letters, digits, hyphens (and
 * underscores, which some sites use), at most 253 characters. Anything else — a space, a line end a quoted YAML
 * string can carry, a U-label — would break the reply it stands in or forge a header line.
 */
const WIRE_HOSTNAME = /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$/;
const wireHostname = () => z.string().max(253).regex(WIRE_HOSTNAME,
  'expected a host name of ASCII letters, digits and hyphens (an internationalised name in its A-labels, xn--…)');
/**
 * A next hop's host: a name (as wireHostname) or an IP address, as written. Postfix's `[host]` (no MX lookup) is
 * refused with what to write instead: it was taken for a host name, whose lookup fails, so mail waited for days
 * and bounced.
 */
const nextHopHost = () => z.string().max(253).superRefine((h, ctx) => {
  if (/^\[.*\]$/.test(h)) {
    ctx.addIssue({ code: 'custom', message: 'expected the host without brackets: a smarthost is never looked up in MX (what Postfix\'s `[host]` asks for), and an address is written as it is (`192.0.2.1`, `2001:db8::1`)' });
  } else if (!isIP(h) && !WIRE_HOSTNAME.test(h)) {
    ctx.addIssue({ code: 'custom', message: 'expected a host name of ASCII letters, digits and hyphens (an internationalised name in its A-labels, xn--…), or an IP address' });
  }
});
/** access(5) actions that refuse for now: what a policy service may answer when its script failed. */
const TEMPORARY_REFUSAL = /^(?:(?:DEFER_IF_PERMIT|DEFER)(?:[ \t].*)?|4\d\d(?:[ \t].*)?)$/i;
/** Text inside a reply line: printable ASCII only (a line end would end the reply and start another). */
const replyText = () => z.string().max(200).regex(/^[\x20-\x7e]*$/, 'expected printable ASCII text, without line ends');

/** The longest wait between two delivery attempts: 31 days. */
const MAX_RETRY_STEP_SECONDS = 31 * 24 * 3600;
/**
 * A time a timer waits for: Node's timers take at most 2^31-1 ms (about 24.8 days) and run a longer one
 * after 1 ms, so a mistaken huge timeout would time out everything at once, and a scan interval spin.
 */
const timerMs = () => z.number().int().positive()
  .max(MAX_TIMER_MS, `at most ${MAX_TIMER_MS} ms (about 24.8 days): a timer runs a longer time after 1 ms`)
  .meta({ unit: 'ms' });

const tlsSchema = z.strictObject({
  mode: z.enum(['none', 'starttls', 'implicit']).default('none')
    .describe('`none`: plaintext only. `starttls`: EHLO offers STARTTLS. `implicit`: TLS from the first byte (port 465 style), with no STARTTLS.'),
  cert: path().optional()
    .describe('Server certificate chain in PEM, leaf first. Only `CERTIFICATE` blocks are read, so a combined key+cert file also works. Required unless `mode: none`.'),
  key: path().optional()
    .describe('Private key (PEM). It must match the certificate, which is checked at load. Required unless `mode: none`.'),
  clientCertificates: z.enum(['none', 'request', 'require']).default('none')
    .describe('`none`: never ask. `request`: ask, and continue without a certificate or with an untrusted one. `require`: without a trusted (or pinned) certificate, reply `421 4.7.1` and close. See [client-certificates.md](client-certificates.md).'),
  caFiles: z.array(path()).default([])
    .describe('PEM bundles, one or more certificates per file (at most 1000 a file: a bundle of more is an error naming it, and a reload keeps the running one). These are the only CAs a client certificate is verified against; system and public roots are never used. Each bundle must include the root. A public CA (one of the roots of Mozilla\'s store that Node ships, or a CA one of them issued, as in the system bundle) is refused: every certificate it issues, to anyone, would verify as a client\'s. A CA that has expired, or a certificate that is not a CA, is logged as a warning. Read only when `clientCertificates` is not `none`.'),
  crlFiles: z.array(path()).default([])
    .describe('CRLs in PEM (`X509 CRL` or `CRL` blocks, several per file) or DER. Each must be signed by a CA in `caFiles`, or the load fails. Once any CRL is configured, every CA in a client\'s chain needs its own CRL; a missing one gives the verdict `crl-missing`. An expired CRL is logged as a warning, and every certificate of its CA then fails with `CRL_HAS_EXPIRED`.'),
  strict: z.boolean().default(false)
    .describe('A certificate that is neither CA-verified nor pinned ends the connection right after the handshake, without an SMTP reply, instead of continuing unauthenticated. A missing certificate is governed by `clientCertificates`.'),
  minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2').describe('Lowest TLS version accepted.'),
}).describe('TLS of this listener: server certificate, and whether and how client certificates are asked for and verified.');

const identitySchema = z.strictObject({
  field: z.enum(['none', 'emailAddress', 'CN', 'sanEmail']).default('none')
    .describe('Which field of the certificate names the account. This is read only from a certificate that verified against `caFiles` (not revoked, not expired). `emailAddress` is the PKCS#9 subject attribute, `CN` the subject common name (for both, a subject with two of them names no account), `sanEmail` the first e-mail subject alternative name. A value with control, format or space characters, longer than 254 characters, or that lowercasing would turn into ASCII it did not have (U+212A KELVIN SIGN becomes `k`), names no account; so does an address not in NFC or whose domain is not written in its A-labels or its U-labels exactly (`admin@ｅｘａｍｐｌｅ.com`, `admin@example。com`, `admin@example.com.`: the sender binding reads each as admin@example.com). A `CN` must also keep within the e-mail name constraints of the chain\'s CAs (OpenSSL applies them to e-mail fields, not to the CN), compared as the account binds a sender: case-folded and its domain by its A-labels (`admin@ｅｘａｍｐｌｅ.com` or `Admin@example。com` is `admin@example.com` to an excluded `example.com`), so it names no account through an intermediate that only the client sends and `caFiles` does not hold (Node shows a server no such certificate): list intermediates in `caFiles`. This is Dovecot\'s `ssl_cert_username_field`. Needs `tls.caFiles`.'),
  pins: z.string().optional().meta({ format: 'table name' })
    .describe('A [table](#tables) that maps SPKI SHA-256 pins to accounts. It matches whatever the chain verdict is, so self-signed, expired and foreign-CA certificates can match, as in mox; but not a key too weak to trust (RSA or DSA under 2048 bits, a curve under 224 bits). A pin is tried before `field`, except that a CA-verified certificate whose `field` names another account is that account\'s (anyone can pin a public key). The key may be hex, colon hex, base64 or base64url (see [client-certificates.md](client-certificates.md#identities-field-and-pins)). The table must exist under `tables`.'),
  autoLogin: z.boolean().default(false)
    .describe('A certificate with an identity logs the session in as soon as TLS is up, without AUTH. Scripts then see `connection.auth.mechanism: "CERTIFICATE"`. One SASL AUTH is still allowed afterwards.'),
}).prefault({}).describe('How a client certificate names an account (its identity).');

const senderLoginSchema = z.strictObject({
  enforce: z.boolean().default(false)
    .describe('Check the sender of every `MAIL FROM` on a logged-in session (AUTH, or a certificate `autoLogin`). A sender the identity may not use gets `553 5.7.1 <address>: Sender address rejected: not owned by user <identity>`. Sessions that are not logged in (inbound mail) are not checked; use `auth.required` on submission listeners. Off, on a listener where clients log in and whose scripts have no `mailfrom` script, a start, a reload and `postern check` warn at `auth.mechanisms` (or `autoLogin`): any account could send as any other.'),
  table: z.string().optional()
    .describe('A [table](#tables) whose key is the login identity (the username of a password login, the certificate identity otherwise) and whose value lists the further senders it may use, separated by commas or spaces. An entry `@domain` allows every address in exactly that domain (not its subdomains). The table must exist under `tables`.'),
  allowNullSender: z.boolean().default(false)
    .describe('Whether a logged-in session may use the null sender `<>`. When not allowed: `553 5.7.1 <>: Sender address rejected: null sender not allowed for user <identity>`. (Postfix never checks `<>`; set `true` for the same behaviour.)'),
  headerFrom: z.boolean().default(true)
    .describe('With `enforce`, also bind the message\'s header to the login at the end of DATA, as mox does: the From: field (the author a reader is shown, and the one DKIM signs and DMARC aligns on) must be exactly one field whose every address (of a list or a group, and any address written in a display name) the identity may use as `MAIL FROM`, else `550 5.7.1 <address>: From: header address rejected: not owned by user <identity>`; the same for each address of a `Sender:` field. No From: field or two get `550 5.6.0 Message must have exactly one From: header field, not <n>`, one without an address `550 5.6.0 Message From: header field names no address`. This runs before the `data` script. `false` binds only the envelope, as Postfix\'s `smtpd_sender_login_maps` does.'),
}).prefault({});

const limitsSchema = z.strictObject({
  maxMessageSize: z.number().int().positive().meta({ unit: 'bytes' }).default(25 * 1024 * 1024)
    .describe('Advertised as `SIZE`. A `MAIL FROM … SIZE=` above it gets `552 5.3.4 Error: message exceeds fixed maximum message size <n>`. A larger DATA gets `552 5.3.4 Message size exceeds fixed maximum message size` and is not kept: writing to the spool stops, and what was written is dropped, as soon as the message passes the limit. The rest is read and discarded up to the final `.`, and the reply comes after it (as in Postfix), so the connection can go on with the next transaction and is not kept.'),
  maxHeaderBytes: z.number().int().positive().meta({ unit: 'bytes' }).default(1024 * 1024)
    .describe('Largest header section of a message: everything up to the first empty line, or up to the first line that is neither a field nor a folded line (all of a message that has neither). A larger one gets `552 5.3.4 Message header section exceeds fixed maximum size of <n> bytes` after the final `.`, and the message is not kept. The `data` hook sees the whole header section.'),
  maxHeaderFields: z.number().int().positive().default(5000)
    .describe('Most fields in the header section of a message (a folded field counts once). More get `552 5.3.4 Message header section exceeds fixed maximum of <n> fields` after the final `.`, and the message is not kept. Each field is an entry of the `data` hook\'s `ctx.data.headers`: without this bound, a header section within `maxHeaderBytes` could hold some 250,000 short fields, and a script going through them runs out of its `sandbox.timeoutMs` (a `451` the client retries for ever).'),
  maxRecipients: z.number().int().positive().default(100)
    .describe('Recipients accepted per transaction, counted by their RCPT TO commands: a recipient named again counts again, as in Postfix `smtpd_recipient_limit` (kept once, it would otherwise be accepted without end in one transaction, each time running the `rcptto` script). Each RCPT TO beyond this gets `452 4.5.3 Error: too many recipients`.'),
  maxConnections: z.number().int().positive().default(500)
    .describe('Concurrent connections on this listener, counted over every worker process of `postern serve`. A new connection over it, from an address holding at least two fewer connections than another address, closes one of the address holding the most — one that never sent a command first, then the one idle longest, never one receiving a message (unless it arrives below `minDataRate`), being answered, or waiting for its greeting or its end-of-data reply — with `421 4.7.0 <hostname> Too many connected clients, this idle connection is closed for another client`, and is greeted: a few addresses at their `maxConnectionsPerIp` cannot keep every other client out. Otherwise (every address holds about as many) a message arriving below `minDataRate`, or else a connection idle at least `idleWhenFullMs`, is closed for it; failing both it gets `421 4.7.0 <hostname> Too many connected clients, try again in a moment`. Under `postern serve` a worker closes only connections of its own for it, and the new client\'s address counts with its connections on every worker. Under `postern serve`, a connection that would make more than this many waiting for a worker (all busy, or being replaced) is closed by the supervisor as it is accepted, without a reply: a flood (through a `proxyProtocol` balancer too) cannot fill the queue every client waits in.'),
  maxConnectionsPerIp: z.number().int().positive().default(50)
    .describe('Concurrent connections from one client address to this listener, counted from the moment the connection is accepted, so connections still in (or never starting) their TLS handshake count too. Beyond it: `421 4.7.0 Too many connections from your address`. On an implicit-TLS listener that reply needs a handshake first: up to as many again are let through to read it (each within `tlsHandshakeTimeoutMs`), and a connection beyond twice the limit is closed at once, before TLS, without a reply. Under `postern serve`, a connection that would make more than this many from the address waiting for a worker (all busy, or being replaced) is closed by the supervisor as it is accepted, without a reply.'),
  ipv6PrefixLength: z.number().int().min(32).max(128).default(64)
    .describe('An IPv6 client is counted by its network of this many bits, not by its address, for `maxConnectionsPerIp`, `connectionsPerIpInStore` and `authFailuresPerIp` (and, on the account page of this listener, `accounts.maxConnectionsPerIp` and its failed sign-ins): a host usually has a whole /64, so per address one client could open `maxConnectionsPerIp` connections, and make `authFailuresPerIp` guesses, from each of its 2^64 addresses (mox counts by /64 too; Postfix 3.9 has `smtpd_client_ipv6_prefix_length`). 128 counts each address. IPv4 clients are always counted by their address. Logs, decision lines, scripts and `Received:` show the address itself. For `maxConnectionsPerIp` a change takes effect at the next restart (a reload logs that it needs one): the connections are counted as they are accepted, under `postern serve` by the supervisor.'),
  connectionsPerIpInStore: z.boolean().default(false)
    .describe('Count `maxConnectionsPerIp` in the [store](#store) as well, so that with `store.redis` the limit holds over every server sharing that Redis (and key prefix): each open connection holds a lease there from its greeting to its close, renewed by its server, and expiring `store.redis.connectionLeaseSeconds` after a server that died last renewed it. Over the limit: `421 4.7.0 Too many connections from your address`. When the store cannot be reached, every new connection to this listener gets `421 4.7.0 Connection limit cannot be checked, try again later` (fail closed); listeners without this option are not affected. Listeners that should share the count need the same `name` on every server. Without `store.redis` nothing changes (a warning at start says so): the server\'s own count already covers all its worker processes. See [scaling.md](scaling.md#connections-per-address-over-both-nodes).'),
  tlsHandshakeTimeoutMs: timerMs().default(10_000)
    .describe('A TLS handshake, at connect on implicit TLS or after STARTTLS, must complete within this time, or the connection is closed; one that progressed meanwhile (the client sent more of it) gets this time once more, so at most twice this (the idle timeout `socketTimeoutMs` restarts with every byte, so a handshake sent a byte at a time would keep the connection).'),
  socketTimeoutMs: timerMs().default(5 * 60_000)
    .describe('Idle timeout, and the time the client has to send each line (a command, or a line of its message) once it began it: a line still not complete this long after its first byte ends the connection as idleness does, whatever bytes came meanwhile (as Exim\'s `smtp_receive_timeout`, Postfix\'s `smtpd_per_record_deadline`), so a client sending a byte every few seconds cannot keep its connection and its slot. Either way the client gets `421 4.4.2 Timeout - closing connection` and the connection is closed. Neither counts while the client waits for Postern (its greeting, a script deciding, the commit of its message). The TLS handshake has its own `tlsHandshakeTimeoutMs`, the PROXY header `proxyProtocol.headerTimeoutMs`.'),
  dataTimeoutMs: timerMs().default(60 * 60_000)
    .describe('The whole message, from the `354` after DATA to its final `.`, must arrive within this time, or the client gets `421 4.4.2 Timeout - closing connection` and the connection is closed (sendmail\'s `Timeout.datablock`). `socketTimeoutMs` bounds each line; this bounds a client that sends each line just in time, which could otherwise hold its connection for as long as its message may grow. The default lets a `maxMessageSize` message of 25 MiB arrive at 7 KB/s.'),
  minDataRate: z.number().int('a whole number of bytes a second').min(0, 'at least 0 (0: never)').max(1024 * 1024 * 1024).meta({ unit: 'bytes/s' }).default(256)
    .describe('While this listener is full (`maxConnections`), the slowest message transfer below this rate, averaged over the last `dataRateWindowMs` of the connection\'s message transfers (bytes read from the client from each `354` to its final `.`, the time between its messages not counted: a client dripping one short message after another is judged over all of them; a connection whose transfers add up to less than the window is not judged), is closed for a new client with `421 4.4.2 <hostname> Message arriving too slowly while the server is full, closing connection`, and the new client is greeted. Nothing of it was accepted (a message is accepted only by the `250` after its final `.`), so its client sends it again later. A message waiting for its end-of-data reply, one whose reading Postern itself holds back (its spool behind), and any transfer on a listener that is not full are never judged: a client on a slow link keeps its `dataTimeoutMs`. Without it a client sending each line just within `socketTimeoutMs` held its slot for up to `dataTimeoutMs`, and a few addresses (or many, one connection each) could keep every other client out for as long. The default is a fraction of the slowest real links (2G data sends several KB/s). Under `postern serve` each worker judges its own transfers when a new client reaches it. `0`: never.'),
  dataRateWindowMs: z.number().int().min(1000, 'at least 1000 ms: a shorter window judges a transfer by a moment of it').max(60 * 60_000, 'at most 3600000 ms (an hour, the default dataTimeoutMs)').meta({ unit: 'ms' }).default(60_000)
    .describe('The window `minDataRate` is averaged over: a transfer stalled for a while (a lost packet, a laptop waking) is judged by what it sent over all of it.'),
  idleWhenFullMs: z.number().int().min(0, 'at least 0 (0: never)').max(2147483647).meta({ unit: 'ms' }).default(10_000)
    .describe('While this listener is full (`maxConnections`) and neither the share-out between addresses nor `minDataRate` closes a connection for a new client, the connection idle longest in the command phase is closed for it, if idle at least this long: one that never had a `MAIL FROM` accepted (nor a message) first, then the one idle longest; with `421 4.7.0 <hostname> Too many connected clients, this connection idle for <seconds> s is closed for another client`, and the new client is greeted. Idle means no command answered `2xx`/`3xx` other than NOOP, RSET, VRFY, HELP, EXPN, HELO or EHLO (the junk commands of `maxJunkCommands`), and no message received nor STARTTLS handshake completed, since its greeting, the time it waited for our replies not counted; of those replies at most `maxRecipients` + 16 between two accepted messages count: a client sending a NOOP every few seconds, a command line a byte at a time, or an accepted RCPT (RSET, MAIL FROM, RCPT again) every few seconds without ever sending a message, is idle. Never one receiving a message, being answered, in a STARTTLS handshake, or waiting for its greeting or its end-of-data reply. Without it maxConnections distinct addresses (a botnet), one connection each, idle after EHLO or sending a command just within `socketTimeoutMs`, kept every other client out for as long as they liked. The default is Postfix\'s idle timeout under stress (`smtpd_timeout = ${stress?{10}:{300}}s`, its default since 2.6, used once its smtpd processes run out); a client a real MTA drives sends its next command within milliseconds, and one closed just reconnects. Under `postern serve` each worker closes only its own connections, when a new client reaches it: one reaching a worker with none idle is refused even while another worker holds idle ones (its next attempt may reach that one). A reload changing it applies to the next newcomer, whoever it closes (connections open before the reload too). `0`: never.'),
  greetingDelayMs: z.number().int().min(0).max(60_000).meta({ unit: 'ms' }).optional()
    .meta({ defaultText: '`0` when `auth.mechanisms` is non-empty or `auth.required` is set, else `100`' })
    .describe('Pause before the `220` greeting. A client that talks first gets `421 … You talk too soon`.'),
  maxErrors: z.number().int().positive().default(20)
    .describe('Refusals (4xx and 5xx replies) one connection may get before it is closed with `421 4.7.0 <hostname> Error: too many errors`, as Postfix `smtpd_hard_error_limit`. An accepted message starts the count again. Bounds a session that probes recipients or loops on commands without sending mail.'),
  maxJunkCommands: z.number().int().min(0).default(100)
    .describe('NOOP, RSET, VRFY, HELP, EXPN, HELO and EHLO commands one connection may send before each further one counts as a refusal towards `maxErrors`, as Postfix `smtpd_junk_command_limit`. An accepted message starts the count again. At one command just within `socketTimeoutMs` that is hours; while the listener is full, `idleWhenFullMs` counts these commands as no activity, so a client looping on them is closed for a new one as an idle one is.'),
  maxMessagesPerConnection: z.number().int().min(0).default(1000)
    .describe('Messages one connection may have accepted; its next `MAIL FROM` gets `421 4.7.0 Error: too many messages in this connection, reconnect` and the connection is closed, as Exim\'s `smtp_accept_max_per_connection` (default 1000). What is decided once per connection (the `connect` script, `connectionRatePerIp`, the per-IP counts, the worker it landed on) is decided again for a client that holds its connection for days: a client blocked at connect since, or an address over its connection rate, cannot go on sending on a connection opened before. Every client reconnects on a 421. `0`: no limit.'),
  authFailuresBeforeDelay: z.number().int().min(0).default(3)
    .describe('Failed AUTHs on one connection before the failure replies slow down.'),
  authFailureDelayMs: z.number().int().min(0).meta({ unit: 'ms' }).default(1000)
    .describe('Delay added to failure *n* is (*n* − `authFailuresBeforeDelay`) × this, capped at 30 s.'),
  authFailuresPerIp: z.number().int().positive().default(20)
    .describe('Once one client address has this many failed AUTHs within `authFailureWindowMs`, it cannot authenticate: its new connections to this listener, and AUTH on its connections already open, get `421 4.7.0 Too many authentication failures, try again later`. The failures are counted over every listener (and the account page), but a listener without `auth.mechanisms` does not refuse the address: it has no login to guess, and an MX keeps taking mail from a server behind an address whose users mistyped their passwords on submission. This bounds the guesses checked over every worker (and, with `store.redis`, every node) together, guesses sent in parallel included: a guess takes its place in the store before its password is checked, and gives it back when the password was right; while the places left below the limit are held by guesses being decided, the next waits for them (their verification\'s time), and fails closed (`454 4.7.0`) after 10 s.'),
  authFailureWindowMs: z.number().int().positive().meta({ unit: 'ms' }).default(10 * 60_000)
    .describe('The sliding window for this listener\'s `authFailuresPerIp`: it counts the failures within it. The failures are kept for the longest window of any listener, set at start: a change of that longest window needs a restart (until then a longer window counts the failures kept).'),
  authFailuresPerAccount: z.number().int().min(0).default(50)
    .describe('Once one account has had this many failed password guesses (`PLAIN`, `LOGIN`, and sign-ins on the account page) within `authFailureWindowMs`, from whatever addresses, its password logins get `454 4.7.0 Temporary authentication failure, try again later` (the page: `429`) until that window, opened by its first failure, ends, right password or not: a guesser spreading its guesses over many addresses, each below `authFailuresPerIp`, gets no more than this many per window. Counted in the [store](#store) (over every worker and, with `store.redis`, every server), per name as the client typed it (lowercased, NFC), whether or not such an account exists (else the deferral would tell which exist). So that a stranger cannot lock a user out, two logins are never deferred: `EXTERNAL` (a client certificate), and a password login from an address (IPv6: its `ipv6PrefixLength` network) that logged in as that account within the last 30 days (counted from its latest login; the exemption may last up to 45 days). A user on a new address waits for the window to end while the account is under attack: the trade-off of Dovecot\'s auth policy server (weakforced), which slows logins per account as well as per address. A guess takes its place in the count before its password is checked (and gives it back when the password was right), so guesses sent at the same moment, on every worker and server, are held to the limit too. When the store cannot answer, password logins get the same `454` (fail closed). The count is kept per account, whatever the listener: listeners with the same accounts should have the same limit. `0`: no limit.'),
  connectionRatePerIp: z.strictObject({
    count: z.number().int().positive().describe('Connections one client address may open to this listener within the window.'),
    windowSeconds: z.number().int().positive().max(24 * 3600).meta({ unit: 'seconds' })
      .describe('Length of the window. It opens with the address\'s first counted connection; when it ends the count starts again from 0. Shortened by a reload, a window already open ends within the new length.'),
  }).optional().meta({ defaultText: 'no limit' })
    .describe('New connections per client address (IPv6: per `ipv6PrefixLength` network), as Postfix `smtpd_client_connection_rate_limit` (anvil): a client that reconnects in a loop, each time with a TLS handshake, costs the server CPU that `maxConnectionsPerIp` (which counts only open connections) does not bound. Counted in the [store](#store), so over every worker process and, with Redis, every server. The connection over the limit gets `421 4.7.0 Error: too many connections from <ip>, try again later` before the greeting; on an implicit-TLS listener it is closed as it is accepted, before the TLS handshake (the cost this limit bounds), without a reply. When the store cannot be reached, `421 4.7.0 Connection rate cannot be checked, try again later` (fail closed). Refused connections are not counted, nor, on a `proxyProtocol` listener, the balancer\'s own connections (a `LOCAL` or `UNKNOWN` header: its health checks), as Postfix exempts `mynetworks` from this limit.'),
  messagesPerIdentity: z.strictObject({
    count: z.number().int().positive().describe('Messages (MAIL FROM commands) one identity may start within the window.'),
    windowSeconds: z.number().int().positive().max(31 * 24 * 3600).meta({ unit: 'seconds' })
      .describe('Length of the window. It opens with the identity\'s first counted MAIL FROM; when it ends the count starts again from 0. Shortened by a reload, a window already open ends within the new length.'),
  }).optional().meta({ defaultText: 'no limit' })
    .describe('Per-identity sending limit, as Postfix `smtpd_client_message_rate_limit` and mox\'s per-account limits, counted in the [store](#store) (so across processes and, with Redis, across servers). The identity is the logged-in user (AUTH or certificate `autoLogin`), else the client certificate\'s identity (`certificateIdentity`); sessions with neither are not counted. A MAIL FROM over the limit gets `450 4.7.1 Error: too much mail from <identity>, try again later`; when the store cannot be reached, `451 4.3.0 Temporary local problem, try again later` (fail closed). The count is kept per identity, whatever the listener: listeners with the same identities should have the same limit.'),
}).prefault({}).describe('Sizes, connection counts, timeouts, auth-failure throttling.');

export const listenerSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, . _ - only')
    .describe('Letters, digits, `_`, `.` and `-`. Identifies the listener in logs and spool records, and to scripts as `connection.listener`. Must be unique.'),
  listen: hostPort
    .describe('For example `127.0.0.1:2525`, `0.0.0.0:25` or `[::1]:587`. Port `0` binds any free port. Two listeners cannot use the same address, however it is written (`[::ffff:127.0.0.1]` is `127.0.0.1`, `[0:0:0:0:0:0:0:1]` is `[::1]`), nor a port that `0.0.0.0` (every IPv4 address) or `[::]` (every address) takes, except with port 0. On port 587 or 465 (submission) without `auth.required`, a start, a reload and `postern check` warn at this key\'s line: such a port takes anyone\'s mail for the local domains without a login (RFC 6409 §4.3).'),
  tls: tlsSchema.prefault({}),
  requireTls: z.boolean().default(false)
    .describe('Before TLS, MAIL FROM gets `530 5.7.0 Must issue a STARTTLS command first`. Needs `tls.mode` `starttls` or `implicit`. AUTH before TLS is refused on any TLS-capable listener, whatever this says (see [auth](#listenersauth)).'),
  auth: z.strictObject({
    mechanisms: z.array(mechanism).default([])
      .describe('SASL mechanisms. With an empty list, the AUTH command itself is disabled (`500 5.5.2 Error: command not recognized`). On a listener with `tls.mode` other than `none`, nothing is offered before TLS, and AUTH gets `538 5.7.11`. On `tls.mode: none`, `PLAIN` and `LOGIN` send passwords in clear text: unless the listener listens on loopback only and without `proxyProtocol` (whose clients are the balancer\'s, from anywhere), a start, a reload and `postern check` warn at this key\'s line (a balancer that ends TLS in front of it is the one sound use). `EXTERNAL` is offered only after TLS and only with a usable client certificate; see [client-certificates.md](client-certificates.md#ehlo-what-is-offered-when). A response (initial or after `334`) that is not base64 gets `501 5.5.2 Invalid base64 in SASL response`, and `*` cancels with `501 5.7.0 Authentication aborted` (RFC 4954), for every mechanism.'),
    required: z.boolean().default(false)
      .describe('MAIL, RCPT and DATA before a login get `530 5.7.0 Authentication required`. A login is a successful AUTH or a certificate `autoLogin`. With an empty `mechanisms` list the configuration must use `certificateIdentity` with `autoLogin` (the only way to log in), else it is refused.'),
  }).prefault({}).describe('SMTP AUTH: the mechanisms offered, and whether a login is required.'),
  certificateIdentity: identitySchema,
  relayClientCertificates: z.boolean().default(false)
    .describe('The built-in relay rule at RCPT TO accepts any recipient when the client certificate verified against `tls.caFiles` (and, with CRLs, is not revoked). Postfix `permit_tls_all_clientcerts`. Needs `tls.caFiles`.'),
  senderLogin: senderLoginSchema.describe('Which envelope senders a logged-in session may use (checked at MAIL FROM, before the mailfrom script).'),
  limits: limitsSchema,
  scripts: path().optional().meta({ defaultText: 'top-level `scripts`' })
    .describe('Scripts folder for this listener only. It must exist and be readable (an empty folder holds no scripts).'),
  shadowScripts: path().optional().meta({ defaultText: 'none' })
    .describe('A candidate scripts folder run beside the live one on this listener\'s traffic ("shadow mode"): after each live script call has decided, the same hook of this folder runs on the same context, off the client\'s path, in isolates of its own (never on the event-loop thread); a different verdict is logged and counted (`postern_shadow_calls_total`, `postern status`). It never changes a reply, spools or delivers; its errors and timeouts are counted, not fatal; calls beyond what its isolates can take are skipped and counted. Reloads like the live folder. A hook runs in shadow only where the live folder has a script for it. See [authoring.md](authoring.md#shadow-scripts).'),
  banner: replyText().optional().meta({ defaultText: '`Postern`' })
    .describe('Text after `ESMTP` in the greeting: `220 <hostname> ESMTP <banner>`. Printable ASCII, at most 200 characters.'),
  proxyProtocol: z.strictObject({
    trusted: z.array(z.string().refine((t) => parseCidr(t) !== null, 'expected an address or CIDR, e.g. 10.0.0.0/24 or fd00::/64'))
      .min(1).meta({ format: 'addresses / CIDRs' })
      .describe('Load balancers allowed to send the header, as addresses or CIDRs (IPv4 and IPv6). A connection from any other address is closed at once, without a reply; so is one from a trusted address whose header is missing, malformed or late.'),
    headerTimeoutMs: timerMs().default(5000)
      .describe('Time from the TCP accept to a complete header; later, the connection is closed.'),
  }).optional().meta({ defaultText: 'off' })
    .describe('Take HAProxy\'s PROXY protocol header (version 1 or 2, detected per connection) before SMTP or the implicit-TLS handshake, and use the client address it names everywhere: scripts, `maxConnectionsPerIp` and the auth-failure counts, logs, decision lines and `Received:`; the address it names as the one the client connected to is scripts\' `localAddress`/`localPort`. A `LOCAL` (v2) or `UNKNOWN` (v1) header, as a balancer\'s health check sends, keeps the balancer\'s own address. Every connection to the listener must then come through a trusted balancer. Needs a restart to change. See [scaling.md](scaling.md).'),
  reverseDns: z.boolean().default(true)
    .describe('Before the greeting, look up the client\'s PTR name, waiting at most 1.5 s, and confirm it: the name counts only when its A (AAAA) records include the client\'s address (Postfix\'s verified client name); otherwise the client is `unknown`. The name is used in logs, the EHLO reply and the `Received:` header. When `false`, `[address]` is used instead.'),
});

/** `check_policy_service` servers for an existing Postfix (docs/postfix-policy.md). */
export const policyServiceSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, . _ - only')
    .describe('Letters, digits, `_`, `.` and `-`. Identifies the service in logs, metrics and `postern status`, and to scripts as `connection.listener`. Must be unique among listeners and policy services.'),
  listen: z.string().regex(/^(unix:.+|(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5})$/, 'expected address:port or unix:/path')
    .meta({ format: '`address:port` or `unix:/path`' })
    .describe('TCP `address:port` (keep it on loopback: the protocol has no authentication; any other address is warned about at start, reload and by `postern check`), or `unix:/path` (relative to the configuration file\'s folder) for a socket Postfix reaches from its queue folder (`unix:/var/spool/postfix/postern/policy` is `check_policy_service unix:postern/policy`; see postfix-policy.md for the folder). Port `0` binds any free port.'),
  socket: z.strictObject({
    mode: z.string().regex(/^0?[0-7]{3}$/, 'octal mode, e.g. 0660').default('0660').describe('Permissions of the unix socket.'),
    owner: z.string().optional().describe('User (name or number) that owns the unix socket. Changing it needs root or CAP_CHOWN, which the systemd unit does not grant: give the socket a `group` instead.'),
    group: z.string().optional().describe('Group (name or number) of the unix socket: without root or CAP_CHOWN, one the server\'s user is in or the one its folder already gives it (a set-group-ID folder, as postfix-policy.md makes).'),
  }).prefault({}).describe('Unix socket only: its mode and owner, set when it is made: a change needs a restart.'),
  scripts: path().optional().meta({ defaultText: 'top-level `scripts`' })
    .describe('Scripts folder for this service. The same `connect`, `helo`, `mailfrom`, `rcptto` and `data` scripts as a listener\'s; `ctx.connection.source` is `postfix-policy`.'),
  authoritative: z.boolean().default(false)
    .describe('An accept answers `OK` (the request is permitted, Postfix skips the rest of that restriction list) instead of `DUNNO` (the next restriction decides).'),
  deferAction: z.enum(['defer_if_permit', 'reply']).default('defer_if_permit')
    .describe('How a defer verdict is answered: `defer_if_permit`: `DEFER_IF_PERMIT <text>` (a later reject still wins); `reply`: the verdict\'s own `451 4.3.0 <text>`.'),
  failureAction: z.string().regex(/^[^\r\n]+$/, 'one line')
    // A failed script fails closed and temporarily, as on a listener: OK, DUNNO, PREPEND, HOLD or DISCARD would let
    // the mail through (DUNNO hands it to the next restriction), and REJECT or a 5xx would bounce mail for our fault.
    .regex(TEMPORARY_REFUSAL, 'a failed script must defer the mail: DEFER_IF_PERMIT <text>, DEFER <text> or 4NN <text> (never OK, DUNNO, REJECT or 5NN)')
    .default('DEFER_IF_PERMIT Service temporarily unavailable')
    .describe('The access(5) action answered when a script fails (throws, times out, runs out of memory, returns a malformed verdict), like Postfix\'s own `smtpd_policy_service_default_action`: a temporary refusal, `DEFER_IF_PERMIT <text>`, `DEFER <text>` or `4NN <text>`; any other action (an accept such as `OK` or `DUNNO`, or a permanent `REJECT`) is refused at load.'),
  fingerprintDigest: z.enum(['sha256', 'sha1', 'md5']).default('sha256')
    .describe('The digest of `ccert_fingerprint` and `ccert_pubkey_fingerprint`: the same as Postfix\'s `smtpd_tls_fingerprint_digest` (`sha256` since Postfix 3.6, `md5` before).'),
  certificateIdentity: z.strictObject({
    field: z.enum(['none', 'CN']).default('none')
      .describe('`CN`: the identity is the subject CN Postfix sends for a certificate it verified (`ccert_subject`).'),
    pins: z.string().optional().meta({ format: 'table name' })
      .describe('A [table](#tables) of SPKI SHA-256 pins to accounts, as a listener\'s: matched against `ccert_pubkey_fingerprint` (needs `fingerprintDigest: sha256`).'),
  }).prefault({}).describe('How a client certificate names an account (`connection.certificateIdentity`).'),
  relayClientCertificates: z.boolean().default(false)
    .describe('The built-in relay rule accepts a certificate Postfix verified (Postfix `permit_tls_all_clientcerts`).'),
  relayClientCertificatesTable: z.string().optional().meta({ format: 'table name' })
    .describe('The built-in relay rule accepts a certificate whose public-key or certificate fingerprint is a key of this [table](#tables), verified or not (Postfix `permit_tls_clientcerts` with `relay_clientcerts`).'),
  relayRule: z.boolean().default(false)
    .describe('Without an `rcptto` script, the built-in relay rule decides (a refused recipient gets `554 5.7.1 <rcpt>: Relay access denied`). `false`: without a script the answer is `DUNNO` (scripts still see `ctx.builtin`).'),
  limits: z.strictObject({
    maxConnections: z.number().int().positive().default(1000).describe('Concurrent connections to this service, over all worker processes under `postern serve` (Postfix keeps one per smtpd process). One more closes a connection (of the worker it is handed to) and takes its place: one that never sent a byte first, then one with a request begun, then one idle between requests, each time the one that has gone longest without a request or an answer (Postfix connects again when it finds its idle one closed), so idle connections cannot keep Postfix out; when every one is being answered it is closed at once. Under `postern serve` it also bounds the service\'s connections waiting for a worker (all busy, or being replaced): more are closed as they are accepted, so a flood of this port cannot fill the queue the listeners\' clients wait in.'),
    maxLineBytes: z.number().int().min(64).meta({ unit: 'bytes' }).default(8192)
      .describe('Longest attribute line. A longer one is answered with `failureAction` and the connection is closed.'),
    maxAttributes: z.number().int().positive().default(200).describe('Attributes in one request; more are answered with `failureAction` and the connection is closed.'),
    maxRequestBytes: z.number().int().min(1024).meta({ unit: 'bytes' }).default(64 * 1024)
      .describe('One request, all its lines together (Postfix sends about 1 KB). A larger one is answered with `failureAction` and the connection is closed: `maxAttributes` × `maxLineBytes` alone let each connection hold 1.6 MB of a request that never ends, 1.7 GB over `maxConnections`.'),
    idleTimeoutMs: timerMs().default(330_000)
      .describe('A connection idle this long is closed (Postfix closes its own after `smtpd_policy_service_max_idle`, 300 s).'),
  }).prefault({}).describe('Per-service connection and request limits.'),
});

const tableSchema = z.union([
  path(),
  z.strictObject({
    file: path().describe('The table file.'),
    format: z.enum(['postfix', 'yaml', 'json']).default('postfix')
      .describe('`postfix`: one `key<whitespace>value` per line; the value is the rest of the line, trimmed. Blank lines and `#` comment lines are skipped. Whitespace is as postmap reads it: spaces and tabs (a no-break space is none, so a line led by one is an error). A line that starts with whitespace continues the entry before it, as postmap reads it (the lines joined as they are: `a  b,` then `  c` is `b,  c`). A line without a value, a duplicate key, or a continuation line with no entry before it is an error, reported with file and line. `yaml` / `json`: a flat mapping whose values are strings, numbers or booleans (stored as strings); two keys that are one entry (the same key given twice, also in JSON, in two cases, a pin in two spellings) are an error at the later one\'s line.'),
    caseSensitive: z.boolean().default(false)
      .describe('When `false`, keys are folded to lowercase, both when the table is loaded and when it is looked up.'),
  }),
]);

const outboundCertificateSchema = z.strictObject({
  cert: path().describe('PEM chain, leaf first.'),
  key: path().describe('Its private key (PEM). It stays in the server and never enters the sandbox.'),
});

const port = () => z.number().int().min(1).max(65535).default(25);


const dkimKeySchema = z.strictObject({
  domain: z.string().regex(/^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$/, 'expected a domain name')
    .describe('Signing domain (`d=`).'),
  selector: z.string().regex(/^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$/, 'expected a selector (letters, digits, `.`, `_`, `-`)')
    .describe('Selector (`s=`): the public key is published in DNS as TXT `<selector>._domainkey.<domain>`.'),
  privateKey: path()
    .describe('Private key file (PEM, PKCS#8 or PKCS#1): RSA of at least 1024 bits (2048 recommended), signing `rsa-sha256`, or Ed25519, signing `ed25519-sha256` (RFC 8463). Read by the server (checked at every start, reload and `postern check`; used by the queue process to sign); it never enters the sandbox.'),
  senderDomains: z.array(z.string()).default([])
    .describe('Envelope-sender domains (compared case-insensitively and by their A-labels: an IDN may be written `bücher.example` or `xn--bcher-kva.example`) whose mail is signed with this key unless a `predelivery` script chooses otherwise (`deliver({ dkim })`), when a logged-in client sent it (SMTP AUTH or a certificate `autoLogin`): anyone may write any envelope sender, and mail from the internet taken in for an internal host with a forged sender of ours would go on signed with our key (mail an internal host relays without logging in is signed when a `predelivery` script names the key). A domain listed under several keys (at most 8) is signed with each, in the order the keys are declared: an RSA and an Ed25519 key, so that verifiers that do not know Ed25519 still find a signature they check (RFC 8463 §4).'),
});

const deliverySchema = z.strictObject({
  enabled: z.boolean().default(true).meta({ defaultText: '`true` once the section exists; `false` without it' })
    .describe('Deliver spooled mail. `false`: accept and spool only.'),
  route: z.union([
    z.strictObject({ smarthost: z.strictObject({
      host: nextHopHost().describe('Host name or address of the smarthost, without Postfix\'s brackets (`[relay.example.net]` is refused: a smarthost is never looked up in MX anyway). Its addresses come from A/AAAA (or `native`) lookups, never from MX.'),
      port: port().describe('Port of the smarthost.'),
      implicitTls: z.boolean().default(false).describe('TLS from the first byte (port 465 style) instead of STARTTLS.'),
    }).describe('Every recipient domain goes to this one host.') }),
    z.strictObject({
      mx: z.literal(true).describe('Each recipient domain goes to its MX hosts.'),
      port: port().describe('Port of the MX hosts.'),
    }),
  ]).default({ mx: true, port: 25 })
    .describe('Default next hop of every recipient domain: one smarthost, or the domain\'s MX hosts. See [routing](#routing). A `predelivery` script can override it per domain.'),
  tls: z.strictObject({
    mode: z.enum(['none', 'may', 'encrypt', 'verify']).default('may')
      .describe('Outbound TLS, as Postfix `smtp_tls_security_level`. See [TLS](#outbound-tls).'),
    clientCertificate: z.string().optional().meta({ format: 'name' })
      .describe('Default outbound client certificate: a key of `clientCertificates`. Without it, none is presented unless a script names one.'),
    ca: z.string().optional().meta({ format: 'name' })
      .describe('CA bundle for `verify`: a key of `caFiles`. Without it, `verify` uses Node\'s built-in public root store.'),
  }).prefault({}).describe('Outbound TLS defaults; a `predelivery` script can override them per domain.'),
  clientCertificates: z.record(z.string(), outboundCertificateSchema).default({})
    .describe('Outbound client certificates, by name. See [client certificates](#outbound-client-certificates).'),
  caFiles: z.record(z.string(), path()).default({}).describe('CA bundles (PEM) by name, for `verify`; at most 1000 certificates a bundle (more is an error naming the file).'),
  dkim: z.record(z.string(), dkimKeySchema).default({})
    .describe('DKIM signing keys, by name. Outbound mail is signed with the keys a `predelivery` script names (`deliver({ dkim: \'<name>\' })` or a list of names, one signature each; `null`: unsigned), else, for mail a logged-in client sent, with the keys that list the sender\'s domain under `senderDomains`, else not at all. See [DKIM signing](#dkim-signing).'),
  concurrency: z.number().int().positive().default(20).describe('SMTP transactions in flight at once, in total.'),
  perDestinationConcurrency: z.number().int().positive().default(4)
    .describe('Transactions, and open connections, to one `host:port` at once.'),
  maxBytesInMemory: z.number().int().positive().meta({ unit: 'bytes' }).default(256 * 1024 * 1024)
    .describe('Bytes of large messages (those stored in a file of their own, over 1 MiB) that attempts under way may hold in memory together: an attempt reads its whole message, and up to twice `concurrency` attempts run or wait for a slot, so 40 messages of 25 MiB held by next hops that read slowly took a gigabyte. An attempt whose message does not fit waits until others end; a message larger than this is read when no other large one is held. Mail up to 1 MiB is not counted. Each transaction sends the message a piece at a time, DKIM signature fields in front (no copy of the message per transaction, nor a signed copy); the copy made of a message with lines over `lineLengthLimit` (and, when DKIM keys are declared, of one with bare CR or LF line ends) counts too: an attempt that finds one after the read gives everything back and waits for both.'),
  // Bounded: far enough ahead (2.7e5 years) a step made the next attempt's date invalid, and the attempt's outcome was
  // never recorded (a recipient delivered in it was sent to again after a restart).
  retrySchedule: z.array(z.number().positive().max(MAX_RETRY_STEP_SECONDS, `at most ${MAX_RETRY_STEP_SECONDS} s (31 days) between two attempts`)
    .meta({ unit: 'seconds' })).min(1).default([60, 300, 900, 1800, 3600, 7200, 14400])
    .describe('Wait after failed attempt 1, 2, …; the last value repeats (so every 4 hours after the seventh). Each at most 31 days.'),
  maxAgeHours: z.number().positive().meta({ unit: 'hours' }).default(120)
    .describe('A message still undelivered this long after it was accepted bounces at its next failed attempt.'),
  heloName: wireHostname().optional().meta({ defaultText: '`hostname`' }).describe('EHLO name sent to next hops.'),
  connectTimeoutMs: timerMs().default(30_000)
    .describe('Time limit for the connection, the greeting and the TLS handshake.'),
  commandTimeoutMs: timerMs().default(300_000)
    .describe('Time limit for each reply of the next hop, from when it is awaited, however its bytes trickle in; the message itself must go out at 1 byte/ms at least beyond it. The reply to the end of the message has `endOfDataTimeoutMs`.'),
  endOfDataTimeoutMs: timerMs().default(600_000)
    .describe('Time limit for the reply to the end of the message (its final dot), instead of `commandTimeoutMs`: RFC 5321 §4.5.3.2.6 asks for 10 minutes, as Postfix `smtp_data_done_timeout`, since a next hop may scan the message before it answers. A next hop still silent then may have the message: it is deferred, and may arrive twice.'),
  lineLengthLimit: z.number().int().min(0).refine((n) => n === 0 || n >= 78, 'expected 0 (lines sent as they are) or at least 78')
    .meta({ unit: 'bytes' }).default(998)
    .describe('Longest line sent to a next hop, its CRLF not counted (RFC 5321: 1000 octets with it), as Postfix `smtp_line_length_limit`. A longer line of the message (a client may send any length) is broken by a line end and a space: before a space or tab of the line when there is one, never inside a UTF-8 character, so that in a header the rest is a folded line of the same field. A DKIM signature Postern adds covers the message as sent; one the message came with no longer verifies (as with Postfix). `0`: lines are sent as they are, which next hops that hold to the limit refuse (the message then bounces). See [long lines](#long-lines).'),
  // Bounded below: each scan rereads the whole spool folder; at 1 ms a queue of 2 000 deferred messages kept half a core busy.
  scanIntervalMs: timerMs().min(100, 'at least 100 ms: each scan rereads the whole spool').default(5000)
    .describe('How often the queue runner rereads the spool. This is when it notices `postern queue retry` and `delete`. New mail does not wait for a scan. At least 100.'),
  hostLookup: z.enum(['dns', 'native']).default('dns')
    .describe('How next-hop host names become addresses. `dns`: A and AAAA queries (`/etc/hosts` is not read). `native`: the system resolver (getaddrinfo: `/etc/hosts` first), as Postfix `smtp_host_lookup = native`. MX records always come from DNS.'),
  dnsServers: z.array(dnsServer()).default([]).meta({ defaultText: '`[]` (the system\'s)' })
    .describe('DNS servers for MX queries and, with `hostLookup: dns`, for address queries; each `address` or `address:port`.'),
}).prefault({ enabled: false });

export const configSchema = z.strictObject({
  hostname: wireHostname().default('localhost')
    .describe('Name used in the `220` greeting, the EHLO reply and `Received:` headers: ASCII letters, digits and hyphens (an internationalised name in its A-labels, `xn--…`). With no `localDomains`, the bare `RCPT TO:<postmaster>` is rewritten to `postmaster@<hostname>`.'),
  dataDir: path().default('./data').describe('Holds the spool, `status.json` and the development PKI. Needs a restart to change: until then the server, and each of its processes started again, keeps the one it started with (ask `postern status --data-dir` that one).'),
  scripts: path().default('./scripts')
    .describe('Default policy-script folder. Written in the file, it must exist and be readable (an empty folder holds no scripts, so the built-in rules apply): a missing one is an error at start, reload and `postern check`. Left out, `./scripts` may be missing (no scripts) until a generation has read it. See [what a reload changes](#what-a-reload-changes).'),
  // A wildcard or a stray `@` matched no recipient, silently: the domain meant to be local was refused as relay.
  localDomains: z.array(z.string().refine(isLocalDomain, 'expected a domain name (no wildcards: list each domain, subdomains too) or an address literal such as [192.0.2.1]')).default([])
    .describe('Recipient domains accepted at RCPT TO without relay permission: domain names, or address literals (`[192.0.2.1]`). A wildcard (`*.example.com`) or an `@` is refused: it would match no recipient, so the domain meant would be refused as relay; list each domain, subdomains too. Compared case-insensitively and by their A-labels (an IDN may be written `bücher.example` or `xn--bcher-kva.example`, a recipient may use either). A recipient whose local part routes elsewhere (`user%elsewhere`, `elsewhere!user`) is not local: a next hop that honours the percent hack or bang paths would relay it on (Postfix `reject_unauth_destination` refuses it too). The first one is also the domain of the bare `RCPT TO:<postmaster>` (RFC 5321 §4.5.1: always accepted, whatever the listener may relay), rewritten to `postmaster@<first local domain>` as Postfix does with `$myorigin`.'),
  // Without it every local part of a local domain is accepted, and what the next hop does not know bounces to a
  // sender a spammer may have forged (backscatter).
  localRecipients: path().optional().meta({ defaultText: 'none: every address of a local domain is accepted' })
    .describe('The recipients that exist in `localDomains` (Postfix `local_recipient_maps` / `relay_recipient_maps`), a file of one entry a line: `user@domain`, or `@domain` for every address of that domain (a catch-all); `#` comments and blank lines; a second column (the `OK` of a Postfix `relay_recipients` file) is ignored. A recipient of a local domain that is not listed gets `550 5.1.1 <address>: Recipient address rejected: User unknown in local recipient table` at RCPT TO, whoever the client is (logged in, relay certificate), instead of being accepted and bounced later to a sender that may be forged; an `rcptto` script sees it as `ctx.builtin.reason` `unknown-recipient` and may still accept. `postmaster@` every local domain, and the bare `<postmaster>`, are always accepted (RFC 5321 §4.5.1). Compared as `localDomains` are (case-insensitively and by A-labels) and, in the local part, case-insensitively too (NFC, lower case: `Alice@` is `alice@`, as Postfix\'s lookups fold it). An entry outside `localDomains` is never consulted, and a local domain without any entry refuses every recipient: both are warned about at start, reload and `postern check` (a table with no entry of any local domain refuses them all, as an emptied one would: an error). A bad line is an error with file and line (a line longer than 4096 characters too: one address a line); so is a file that lists nobody (emptied, or caught half written: it would refuse every local recipient), and the running table stays. Reloaded as the [tables](#tables) are, with the same wait for a file that shrank. Without it, a start, a reload and `postern check` warn that the local domains accept any recipient, naming the listeners open to clients without a login (`auth.required` false) and without an `rcptto` script that may check them; not while delivery is off (nothing bounces then).'),
  recipientDelimiter: z.string().min(1).max(8).regex(/^[\x21-\x3f\x41-\x7e]+$/, 'expected printable ASCII characters other than `@`, without spaces')
    .optional().meta({ defaultText: 'none' })
    .describe('Characters that start a subaddress, for `localRecipients`, as Postfix `recipient_delimiter`: with `+`, `alice+lists@example.com` is accepted when `alice+lists@example.com` or `alice@example.com` is listed. Each character is a delimiter; the extension starts at the first one in the local part (not at its first character: `+x@` is a user of its own). As Postfix, `postmaster`, `mailer-daemon` and `double-bounce` are never split, nor, with `-` a delimiter, `owner-…` and `…-request` (mailing-list addresses a next hop keeps whole). Without it `alice+lists@` must be listed itself: a next hop that does not strip subaddresses would bounce what was accepted for it.'),
  // An incomplete first table refused mail for good (550): while it is checked, a temporary refusal loses nothing.
  unknownRecipientReply: z.enum(['reject', 'defer']).default('reject')
    .describe('What an address of a local domain that `localRecipients` does not list gets. `reject`: `550 5.1.1 <address>: Recipient address rejected: User unknown in local recipient table`. `defer`: `450 4.1.1` with the same text (Postfix `unknown_local_recipient_reject_code = 450`), for the time a new table is checked against the decision lines: nothing is lost, the sender retries, and an address missing from the table gets its mail once it is added. Not for good: a dictionary attack is then retried by its senders rather than refused.'),
  users: path().optional()
    .describe('[Users file](#users-file-and-hash-password) for PLAIN/LOGIN. Without one, every password login fails.'),
  tables: z.record(z.string(), tableSchema).default({})
    .describe('Lookup tables for `lookup()` in scripts and for `certificateIdentity.pins`, by name: a path (postfix format, case-insensitive keys) or an object.'),
  sandbox: z.strictObject({
    timeoutMs: timerMs().default(100)
      .describe('Time limit of one script call. Top-level code, run once per isolate when it loads, gets `max(1000, timeoutMs)`.'),
    memoryLimitMb: z.number().int().min(8).meta({ unit: 'MiB' }).default(32).describe('Heap limit of each isolate.'),
    isolates: z.number().int().positive().max(64).default(2)
      .describe('Isolates per scripts folder. An isolate runs one call at a time; further calls wait for a free one. A folder without scripts gets no isolates.'),
    isolatesPerClient: z.number().int().positive().max(64).optional()
      .describe('Isolates one client (its address; an IPv6 client by its /64, as the connection limits count it) may hold at once with calls on isolate threads (calls that outran the fast path, a hook off it, `fastPathMs: 0`); its further calls wait for one of them, while the rest of the pool stays free for other clients, even when idle. An isolate one of its calls lost (its memory limit, or a call that could not be stopped) counts as its own until it is rebuilt. Default: half of `isolates`, rounded up (1 of the default 2). Calls on the fast path and `predelivery` calls are not counted. See [scripts.md](scripts.md#limits-and-the-sandbox).'),
    fastPathMs: z.number().int().min(0).max(50).meta({ unit: 'ms' }).default(5)
      .describe('A call first runs on the server\'s event-loop thread for at most this long (calls of one event-loop turn run together, within one such limit); a call still running then is stopped and run again on an isolate thread with the full `timeoutMs`. `0` sends every call to an isolate thread. See [scripts.md](scripts.md#limits-and-the-sandbox).'),
  }).prefault({}).describe('Script limits.'),
  spool: z.strictObject({
    minFreeBytes: z.number().int().min(0).meta({ unit: 'bytes' }).default(100 * 1024 * 1024)
      .describe('Free space the spool\'s filesystem must keep: below it new mail is refused with `452 4.3.1 Insufficient system storage` at MAIL FROM and at the end of DATA, so the spool still has room to record deliveries (Postfix `queue_minfree`; `0`: no floor).'),
    minFreeInodes: z.number().int().min(0).default(1000)
      .describe('Free inodes (files) the spool\'s filesystem must keep, as `minFreeBytes` keeps bytes: below it new mail is refused with `452 4.3.1 Insufficient system storage`, so the queue can still create the files that record deliveries (a state file per deferred message, a done list per journal segment). A filesystem without a fixed number of inodes (btrfs) reports none and is never below it. `0`: no floor.'),
    syncDeadlineMs: z.number().int().min(MIN_SYNC_DEADLINE_MS, `at least ${MIN_SYNC_DEADLINE_MS} ms: a healthy disk under load takes a second or more for a sync now and then, and a shorter deadline refused its mail`)
      .max(MAX_SYNC_DEADLINE_MS, `at most ${MAX_SYNC_DEADLINE_MS} ms (5 minutes): a client waits 10 minutes for the reply to its final dot, and the message must be refused within them`)
      .meta({ unit: 'ms' }).default(DEFAULT_SYNC_DEADLINE_MS)
      .describe('How long the spool waits for the disk to confirm a write (the journal\'s sync of a message, a large message\'s file, a hold) before the message is refused with `451 4.3.0`; and the queue process for a delivery state (its outcome is then kept in memory and written as soon as the disk answers, `/readyz` fails `spool` naming the queue process). A disk that stops answering (a lost SAN, iSCSI or NFS path, a drive in endless retries) never returns the sync: past this, the clients waiting get their 451 instead of no reply, and while such a sync has not returned every new transaction is refused at MAIL FROM (or at DATA, before the 354, and the connection closed) with `451 4.3.0 Temporary local problem: the spool cannot confirm writes, try again later`, `/readyz` fails its `spool` check (a load balancer sends the mail to another node), `postern_spool_writes_unconfirmed` is 1 and one error line says so; once the disk answers, mail is taken again. Under `postern serve` each worker has its own journal and refuses once its own sync hangs; `/readyz` fails when any does. At least 5000 (a healthy disk\'s sync takes milliseconds, a slow one\'s under load seconds), at most 300000. A reload changes it for the syncs that start after it.'),
    receivingMemoryBytes: z.number().int().min(0).meta({ unit: 'bytes' }).default(64 * 1024 * 1024)
      .describe('Memory the messages being received may hold together, per process (each worker of `postern serve` has its own). A message is held in memory up to 1 MiB and then goes to the journal in one write, and counts until the journal has it on disk (a slow disk keeps the messages committed meanwhile in memory); past this total, the bytes of every message still coming in go to its own file in the spool\'s `incoming/` folder at once, a few KiB at a time (a file per message, as for messages over 1 MiB), so however many clients send large messages at the same time, what they hold in memory stays near this bound (plus the chunk each is reading). Nothing is refused for it. `0`: every message goes to its own file.'),
  }).prefault({}).describe('Free space the spool keeps, and the memory of the messages being received. See [spool](#spool).'),
  workers: z.union([z.number().int().min(1).max(256), z.literal('auto')]).default('auto')
    .describe('Worker processes of `postern serve` (`auto`: one per core). A supervisor process owns the listening sockets (the workers accept on them, or with `workerChoice: roundRobin` it hands connections over); a worker that crashes or hangs is replaced, so a script can lose only the sessions of the one worker that ran it, never an acknowledged message. Delivery runs in one more process. `workers: 1` still runs supervisor, worker and queue process. Needs a restart to change. See [operations.md § Process model](operations.md#process-model).'),
  workerChoice: z.enum(['fill', 'roundRobin']).default('fill')
    .describe('Which workers of `postern serve` take new SMTP connections. `fill`: the workers accept on the listening sockets the supervisor holds, and only those it tells to, at each heartbeat: the first worker, and the next only while those before it are busy (event-loop utilisation 0.6 or more over the last 100 ms) and the machine has a whole core idle, or they are saturated (busy 95% with its thread on a CPU 85% of the time): work done once per event-loop turn is shared by more sessions, so fewer CPU per message. `roundRobin`: the supervisor accepts each connection and hands it to the workers in turn, each gets a share even at light load (about 100 µs more of the supervisor\'s CPU per connection). Policy-service connections are handed round robin either way. Needs a restart to change. See [operations.md § Process model](operations.md#process-model).'),
  store: z.strictObject({
    redis: z.strictObject({
      url: z.string().superRefine((url, ctx) => {
        const problem = redisUrlProblem(url);
        if (problem) ctx.addIssue({ code: 'custom', message: problem });
      }).meta({ format: 'URL' })
        .describe('`redis://[[user]:password@]host[:port][/db]`, `rediss://…` for TLS, or `unix:///path/to/redis.sock[?db=N&password=…&username=…]` for a redis-server on the same host (its `unixsocket`): the recommended same-host layout, cheaper per round trip than loopback TCP for Postern and for redis-server. Characters such as `# / ? @ : %` in the user name or password are written percent-encoded (`#` as `%23`; in `unix:` parameters also `&` and `+`, as `%26` and `%2B`); `postern check` refuses a URL the client could not read, without repeating it.'),
      keyPrefix: z.string().default('postern:')
        .describe('Put in front of every key. Servers that should count together (one limit over several machines) use the same prefix; unrelated ones a different one.'),
      timeoutMs: timerMs().default(50)
        .describe('Time limit of one store operation (one round trip). Keep it below `sandbox.timeoutMs`: a script\'s call waits for it within its own time limit.'),
      connectionLeaseSeconds: z.number().int().min(2).max(3600).meta({ unit: 'seconds' }).default(30)
        .describe('For `limits.connectionsPerIpInStore`: how long a connection\'s slot lasts without renewal. Each server renews the slots of its open connections every third of this (one round trip for all), so the slots of a server (or worker process) that died, or lost Redis, are free again at most this long after its last renewal.'),
    }).optional()
      .describe('Keep the counters in this Redis (or Valkey) server instead of in memory. Each operation is one Lua script: atomic on the server, one round trip. When the server is unreachable, operations fail at once (nothing is queued) and the client reconnects in the background.'),
    maxKeys: z.number().int().min(1000).default(100_000)
      .describe('In memory (no `redis`): the most keys held for scripts\' `rate()` and `counter()`, and apart from them the most for the built-in limits, for [shadow scripts](authoring.md#shadow-scripts), and for the addresses that logged in as an account (exempt from `limits.authFailuresPerAccount`: only logins make these, so a client making the store count new keys cannot drop them and lock a user out of her own address). When full, expired keys are swept out, else the keys created longest ago are dropped (their counts start again from 0), first those that are not at their `rate()` limit — a key that is refusing is dropped only when nearly every key is, so a client cannot undo its refusal by making the store count new keys — and a warning is logged, so scripts counting millions of distinct keys cannot exhaust the server\'s memory or push out a built-in limit, nor a shadow script a live script\'s count. A key is at most ~1 KiB.'),
  }).prefault({})
    .describe('Where counters live: `rate()` and `counter()` in scripts, `limits.messagesPerIdentity`, the per-address auth-failure counts (`limits.authFailuresPerIp`) and, with `redis`, the connection slots of `limits.connectionsPerIpInStore`. Without `redis`: in memory, shared by the listeners and by every worker process of one server (under `postern serve` the supervisor holds it; the calls a worker makes in one turn go to it as one message, and a call that gets no answer fails closed). See [store](#store). Read at start: a reload that changes it is logged and takes effect at the next restart.'),
  dns: z.strictObject({
    servers: z.array(dnsServer()).default([]).meta({ defaultText: '`[]` (the system\'s)' })
      .describe('DNS servers for scripts\' `dns.resolve()` and `dnsbl()`, each `address` or `address:port` (delivery has its own, `delivery.dnsServers`).'),
    timeoutMs: timerMs().meta({ unit: 'ms', defaultText: '80% of `sandbox.timeoutMs`' }).optional()
      .describe('The most one lookup may take (a script may ask for less); then it answers `{ ok: false, error: "timeout" }`. A script waits for DNS within its own time limit, so this must be below `sandbox.timeoutMs`: raise that for scripts that use DNS.'),
  }).prefault({}).describe('DNS for scripts. See [scripts.md § DNS](scripts.md#dns).'),
  log: z.strictObject({
    level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info')
      .describe('pino log level. Logs are JSON lines on stdout.'),
    format: z.enum(['json', 'pretty']).default('json')
      .describe('json: one JSON object per line with an ISO-8601 time (for journald and log shippers); pretty: coloured, human-readable lines for a terminal'),
  }).prefault({}).describe('Logging. Needs a restart to change.'),
  listeners: z.array(listenerSchema).default([]).meta({ defaultText: '`[]` (then `policyServices` needs an entry)' })
    .describe('One SMTP listener per entry. A configuration needs at least one listener or one policy service.'),
  policyServices: z.array(policyServiceSchema).default([])
    .describe('Postfix policy services (`check_policy_service`): the same scripts behind an existing Postfix. See [postfix-policy.md](postfix-policy.md).'),
  delivery: deliverySchema.meta({ defaultText: 'off without the section' })
    .describe('[Delivery](#delivery) of spooled mail: route, outbound TLS and client certificates, retries, bounces. Without it Postern only accepts and spools.'),
  replay: z.strictObject({
    keepDays: z.number().int().min(1).max(366).meta({ unit: 'days' })
      .describe('Days of recordings kept; older files are deleted.'),
    maxMegabytes: z.number().int().positive().meta({ unit: 'MiB' }).default(512)
      .describe('Size the recordings folder may reach: beyond it a process stops recording until old files have been deleted.'),
  }).optional().meta({ defaultText: 'off' })
    .describe('Record, for `postern replay`, the context each script call saw and the verdict it gave (no message bodies; headers of the data hook are included) in `<dataDir>/replay/`, one file per day and process. **Personal data**: addresses, client addresses, certificate subjects, login names and message headers; keep `keepDays` as short as your use needs and say so in your records of processing. Only hooks with a live script are recorded. See [authoring.md](authoring.md#replay).'),
  pki: z.strictObject({
    dir: path().optional()
      .describe('The CA folder of `postern pki` (made by `postern pki init --dir`): `ca.crt`, `ca.key`, `ca.crl` and `issued.json`. Without it the commands look for a listener\'s `caFiles` entry with a `ca.key` beside it (the development PKI), or take `--dir`. A listener that trusts this CA must load its `ca.crl` in `tls.crlFiles`, where revocations are written: without it a warning, and once the CRL revokes a certificate a start and `postern check` refuse the configuration (a revoked certificate would still verify there); a reload whose configuration in force already had that listener so only warns, so that the other listeners apply the new CRL. See [client-certificates.md](client-certificates.md#issuing-and-revoking-device-certificates).'),
    warnDays: z.number().int().min(0).meta({ unit: 'days' }).default(14)
      .describe('A client certificate seen in the last 30 days that expires within this many days is logged as a warning once a day, and listed first by `postern pki list`.'),
  }).prefault({}).describe('Device certificates: where the CA of `postern pki` lives, and when an expiring certificate is reported.'),
  accounts: z.strictObject({
    listen: hostPort.describe('`address:port` of the account page (HTTPS only). Port `0` binds any free port.'),
    listener: z.string().meta({ format: 'listener name' })
      .describe('The SMTP listener the page is for. The page serves HTTPS with that listener\'s server certificate (`tls.cert`, `tls.key`), asks for client certificates as it does (`tls.clientCertificates`, `caFiles`, `crlFiles`), names their accounts by its `certificateIdentity`, registers uploaded keys in its `certificateIdentity.pins` table, counts failed sign-ins with its SMTP auth failures and refuses by its `limits.authFailuresPerIp`. It needs `tls.mode` `starttls` or `implicit`.'),
    sessionMinutes: z.number().int().positive().max(24 * 60).meta({ unit: 'minutes' }).default(30)
      .describe('A signed-in session ends after this long without a request.'),
    issueDays: z.number().int().positive().meta({ unit: 'days' }).default(730)
      .describe('Lifetime of a device certificate the page issues (from the CA of `pki.dir`).'),
    deviceAdditionsPerHour: z.number().int().positive().default(20)
      .describe('Devices one account may add on the page (issue a certificate, register a certificate or key) within an hour; one more is refused with 429 and logged. Each addition reloads every process and grows the CA\'s records and the pin table: without a bound one signed-in user, or a stolen session, could add in a loop. Revoking and removing are never refused (a lost laptop must always be revocable). Counted by the page\'s process, per account.'),
    maxConnectionsPerIp: z.number().int().positive().default(16)
      .describe('Connections one client address may hold open on the page (of 256 in all); an IPv6 client is counted by its network, as its listener counts it (`limits.ipv6PrefixLength`). One more closes the connection of that address that has gone longest without a handshake, request or answer, and takes its place; when every one is being answered it is closed as it is accepted, before the TLS handshake, without a reply. A browser uses about 6, and reuses them. Users behind one NAT share its address: raise it for a large office.'),
  }).optional()
    .describe('The self-service account page ([accounts.md](accounts.md)): each user signs in with their password (the `users` file) or their client certificate and manages their own devices: issues a certificate (a `.p12` downloaded once), registers a certificate or public key as a pin, revokes or removes one. Off when absent.'),
  admin: z.strictObject({
    listen: hostPort.describe('address:port of the admin HTTP listener: /metrics (Prometheus), /healthz, /readyz, /status. Keep it on loopback or a management network'),
    maxConnectionsPerIp: z.number().int().positive().default(8)
      .describe('Connections one client address may hold open on the admin listener (of 64 in all). One more closes the connection of that address that has gone longest without a request or an answer, and takes its place; when every one of them is being answered it is closed as it is accepted, without a reply. On loopback every local client shares one address: connections that send nothing, or a request a byte at a time, cannot keep a scraper there out.'),
    ipv6PrefixLength: z.number().int().min(32).max(128).default(64)
      .describe('An IPv6 client of the admin listener is counted by its network of this many bits for `maxConnectionsPerIp`, as the SMTP listeners count theirs (`limits.ipv6PrefixLength`): per address, a host with a /64 could hold the cap from each of its addresses, and so all 64 connections. 128 counts each address.'),
    hosts: z.array(z.string().min(1)).default([])
      .describe('Host names, besides IP addresses, `localhost` and `hostname` (as the last reload set it), by which clients (a Prometheus scrape target) reach the admin listener. A request whose Host header names any other gets 421: a web page that a browser on this host or network visits cannot rebind its own name to this address and read /metrics (the accounts and devices of certificates) or /status (DNS rebinding). Taken at start.'),
  }).optional().describe('Admin listener for monitoring ([operations.md](operations.md#monitoring)); off when absent. Needs a restart to change (any of its keys).'),
});

export type Config = z.infer<typeof configSchema>;
export type ListenerConfig = z.infer<typeof listenerSchema>;
export type DeliveryConfig = Config['delivery'];
export type TableConfig = z.infer<typeof tableSchema>;
export type PolicyServiceConfig = z.infer<typeof policyServiceSchema>;
