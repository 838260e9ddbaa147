/**
 * The shape of postern.yaml, with a description and default on every field. Paths stay as written here;
 * the loader resolves them against the configuration file's folder.
 */
import { z } from 'zod';

const hostPort = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, 'expected address:port, e.g. 127.0.0.1:2525');
const mechanism = z.enum(['EXTERNAL', 'PLAIN', 'LOGIN']);

const tlsSchema = z.strictObject({
  mode: z.enum(['none', 'starttls', 'implicit']).default('none')
    .describe('none: plaintext only; starttls: offer STARTTLS; implicit: TLS from the first byte (465 style)'),
  cert: z.string().optional().describe('Server certificate chain (PEM), leaf first'),
  key: z.string().optional().describe('Private key of the server certificate (PEM)'),
  clientCertificates: z.enum(['none', 'request', 'require']).default('none')
    .describe('none: never ask; request: ask, continue without or with an untrusted one; require: 421 4.7.1 without a trusted one'),
  caFiles: z.array(z.string()).default([]).describe('CA bundles that client certificates are verified against'),
  crlFiles: z.array(z.string()).default([]).describe('CRLs (PEM or DER) for those CAs; a certificate listed is reported as revoked'),
  strict: z.boolean().default(false)
    .describe('Close the connection right after the TLS handshake, without an SMTP reply, when the client presented a certificate that is neither CA-verified nor pinned (instead of continuing unauthenticated)'),
  minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
}).describe('TLS settings of a listener');

const identitySchema = z.strictObject({
  field: z.enum(['none', 'emailAddress', 'CN', 'sanEmail']).default('none')
    .describe('Field of a CA-verified, unrevoked certificate that names the account (Dovecot ssl_cert_username_field)'),
  pins: z.string().optional()
    .describe('Lookup table mapping SPKI SHA-256 pins (hex, colon hex, base64, base64url) to accounts; matches whatever the chain verdict (mox)'),
  autoLogin: z.boolean().default(false)
    .describe('A certificate that maps to an identity authenticates the session at once, without AUTH (mox style)'),
}).prefault({});

const limitsSchema = z.strictObject({
  maxMessageSize: z.number().int().positive().default(25 * 1024 * 1024).describe('Bytes; advertised in SIZE'),
  maxRecipients: z.number().int().positive().default(100),
  maxConnections: z.number().int().positive().default(500).describe('Concurrent connections on this listener'),
  maxConnectionsPerIp: z.number().int().positive().default(50),
  socketTimeoutMs: z.number().int().positive().default(5 * 60_000).describe('Idle timeout of a connection'),
  greetingDelayMs: z.number().int().min(0).max(60_000).optional()
    .describe('Pause before the 220 greeting; a client that talks during it gets 421. Default 0 on listeners with AUTH, 100 on others'),
  authFailuresBeforeDelay: z.number().int().min(0).default(3).describe('Failed AUTHs on a connection before replies slow down'),
  authFailureDelayMs: z.number().int().min(0).default(1000).describe('Extra delay per failure beyond the threshold'),
  authFailuresPerIp: z.number().int().positive().default(20)
    .describe('Failed AUTHs from one IP within authFailureWindowMs after which new connections get 421 4.7.0'),
  authFailureWindowMs: z.number().int().positive().default(10 * 60_000),
}).prefault({});

export const listenerSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, . _ - only'),
  listen: hostPort.describe('address:port to listen on'),
  tls: tlsSchema.prefault({}),
  requireTls: z.boolean().default(false).describe('Refuse MAIL before TLS (530 5.7.0). AUTH before TLS is always refused (538 5.7.11) on a TLS listener'),
  auth: z.strictObject({
    mechanisms: z.array(mechanism).default([]).describe('SASL mechanisms offered; EXTERNAL only after TLS with a client certificate'),
    required: z.boolean().default(false).describe('MAIL FROM needs an authenticated session (submission)'),
  }).prefault({}),
  certificateIdentity: identitySchema,
  relayClientCertificates: z.boolean().default(false)
    .describe("Any CA-verified, unrevoked client certificate may relay (Postfix permit_tls_all_clientcerts)"),
  limits: limitsSchema,
  scripts: z.string().optional().describe('Scripts folder for this listener (default: the top-level scripts)'),
  banner: z.string().optional().describe('Text after "ESMTP" in the 220 greeting (default "Postern")'),
  reverseDns: z.boolean().default(true).describe('Look up the client name (PTR) for logs and the Received header'),
});

const tableSchema = z.union([
  z.string(),
  z.strictObject({
    file: z.string(),
    format: z.enum(['postfix', 'yaml', 'json']).default('postfix')
      .describe('postfix: "key whitespace value" lines, # comments; yaml/json: a flat mapping'),
    caseSensitive: z.boolean().default(false),
  }),
]);

const outboundCertificateSchema = z.strictObject({
  cert: z.string().describe('Certificate chain (PEM), leaf first'),
  key: z.string().describe('Private key (PEM); stays in the host, never enters the sandbox'),
});

const deliverySchema = z.strictObject({
  route: z.union([
    z.strictObject({ smarthost: z.strictObject({
      host: z.string().describe('Host name or address of the smarthost'),
      port: z.number().int().min(1).max(65535).default(25),
      implicitTls: z.boolean().default(false).describe('TLS from the first byte (465 style) instead of STARTTLS'),
    }) }),
    z.strictObject({ mx: z.literal(true), port: z.number().int().min(1).max(65535).default(25) }),
  ]).default({ mx: true, port: 25 })
    .describe('Default next hop: one smarthost, or the MX hosts of each recipient domain (lowest preference first, then A/AAAA)'),
  tls: z.strictObject({
    mode: z.enum(['none', 'may', 'encrypt', 'verify']).default('may')
      .describe('Outbound TLS (Postfix smtp_tls_security_level): none; may = STARTTLS when offered, unverified, plaintext if it fails; encrypt = TLS required, unverified; verify = TLS + CA + host name'),
    clientCertificate: z.string().optional().describe('Default outbound client certificate (a name under clientCertificates)'),
    ca: z.string().optional().describe('Default CA bundle for verify (a name under caFiles; default: Node\'s root store)'),
  }).prefault({}),
  clientCertificates: z.record(z.string(), outboundCertificateSchema).default({})
    .describe('Outbound client certificates by name; a pre-delivery script names one'),
  caFiles: z.record(z.string(), z.string()).default({}).describe('CA bundles by name for verify mode'),
  concurrency: z.number().int().positive().default(20).describe('SMTP transactions in flight at once, overall'),
  perDestinationConcurrency: z.number().int().positive().default(4).describe('Connections to one host:port at once'),
  retrySchedule: z.array(z.number().positive()).min(1).default([60, 300, 900, 1800, 3600, 7200, 14400])
    .describe('Seconds to wait after failed attempt 1, 2, …; the last repeats'),
  maxAgeHours: z.number().positive().default(120).describe('A message still undelivered after this bounces'),
  enabled: z.boolean().default(true)
    .describe('Deliver spooled mail. A configuration without a delivery section only accepts and spools'),
  heloName: z.string().optional().describe('EHLO name for outbound connections (default: hostname)'),
  connectTimeoutMs: z.number().int().positive().default(30_000).describe('Connect, greeting and TLS handshake time limit'),
  commandTimeoutMs: z.number().int().positive().default(300_000).describe('Time limit for each reply of the next hop'),
  scanIntervalMs: z.number().int().positive().default(5000)
    .describe('How often the queue runner rescans the spool (for postern queue retry/delete and messages due for a retry)'),
  hostLookup: z.enum(['dns', 'native']).default('dns')
    .describe('Addresses of next hops: dns = A/AAAA queries; native = getaddrinfo, /etc/hosts first (Postfix smtp_host_lookup)'),
  dnsServers: z.array(z.string()).default([]).describe('DNS servers for MX and address lookups, "address" or "address:port" (default: the system\'s)'),
}).prefault({ enabled: false });

export const configSchema = z.strictObject({
  hostname: z.string().default('localhost').describe('Name in the greeting, Received headers and bounces'),
  dataDir: z.string().default('./data').describe('Spool and generated development PKI live here'),
  scripts: z.string().default('./scripts').describe('Default policy scripts folder'),
  localDomains: z.array(z.string()).default([]).describe('Mail for these domains is accepted without relay permission'),
  users: z.string().optional().describe('Users file: "name: password-hash" lines (postern hash-password makes hashes)'),
  tables: z.record(z.string(), tableSchema).default({}).describe('Lookup tables for scripts and pins, by name'),
  sandbox: z.strictObject({
    timeoutMs: z.number().int().positive().default(100).describe('Time limit of one script call'),
    memoryLimitMb: z.number().int().min(8).default(32).describe('Heap limit of each isolate'),
    isolates: z.number().int().positive().max(64).default(2).describe('Isolates per generation; calls spread over them'),
    fastPathMs: z.number().int().min(0).max(50).default(5)
      .describe('A call first runs on the event loop for at most this long, then is moved to an isolate thread (0: always on an isolate thread)'),
  }).prefault({}),
  workers: z.union([z.number().int().min(1).max(256), z.literal('auto')]).default('auto')
    .describe('Worker processes of `postern serve` (auto: one per core). A supervisor process owns the listening sockets and replaces a worker that crashes or hangs; a script can then lose only the sessions of the one worker that ran it. Delivery runs in one more process'),
  log: z.strictObject({
    level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  }).prefault({}),
  listeners: z.array(listenerSchema).min(1),
  delivery: deliverySchema,
});

export type Config = z.infer<typeof configSchema>;
export type ListenerConfig = z.infer<typeof listenerSchema>;
export type DeliveryConfig = Config['delivery'];
export type TableConfig = z.infer<typeof tableSchema>;
