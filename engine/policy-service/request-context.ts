/**
 * A Postfix policy request as the context of one of Postern's hooks: `protocol_state` names the hook, the
 * client attributes become `ctx.connection` (source `postfix-policy`), the envelope attributes the
 * address and transaction, and every attribute stays readable as `ctx.postfix.attributes`.
 */
import type {
  BuiltinRelayDecision, ConnectionInfo, EnvelopeAddress, HookName, PostfixClientCertificate, PostfixPolicyRequest,
} from '../sandbox/api/index.ts';
import type { PolicyServiceConfig } from '../config/schema.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import { builtinRelay } from '../policy/builtin-rules.ts';
import { canonicalIp } from '../addresses/ip-text.ts';
import { asciiDomain, envelopeDomain } from '../policy/domain-key.ts';
import { NO_MESSAGE_BODY } from '../sandbox/index.ts';
import { listedForRelay, postfixCertificate, postfixCertificateIdentity, withRevocation } from './postfix-certificate.ts';

/** Postfix's protocol_state → the hook that decides it. Other states (VRFY, ETRN) have none (see EARLIER_OF_HOOKLESS_STATE). */
const HOOK_OF_STATE: Readonly<Record<string, HookName>> = {
  CONNECT: 'connect', EHLO: 'helo', HELO: 'helo', MAIL: 'mailfrom', RCPT: 'rcptto', DATA: 'data', 'END-OF-MESSAGE': 'data',
};

export function hookOfState(state: string | undefined): HookName | null {
  return (state && HOOK_OF_STATE[state.toUpperCase()]) || null;
}

export interface RequestContext {
  hook: HookName;
  ctx: Record<string, unknown> & { connection: ConnectionInfo };
  /** The sandbox's key for `ctx.connection` (changes with every field of it). */
  key: string;
  /** The built-in relay rule's decision (rcptto only). */
  builtin: BuiltinRelayDecision | null;
}

/**
 * The client's and server's addresses in the one spelling Postern's own listeners give them (canonicalIp), and the
 * envelope's as Postfix delivers them (asPostfixDelivers),
 * before anything reads them: a request naming its client as `2001:DB8:0:0::1` or `::ffff:192.0.2.1` (a
 * client of the service other than Postfix, a proxy's header passed on) was another client than
 * `2001:db8::1` or `192.0.2.1` to rate() keys built from ctx.connection.remoteAddress, to a table keyed by
 * address, to dnsbl() (a mapped address was asked in ip6.arpa form) and to a grep of the log.
 */
export function sameSpellingOfAddresses(a: Record<string, string>): void {
  if (a.client_address !== undefined) a.client_address = canonicalIp(a.client_address);
  if (a.server_address !== undefined) a.server_address = canonicalIp(a.server_address);
  if (a.sender) a.sender = asPostfixDelivers(a.sender);
  if (a.recipient) a.recipient = asPostfixDelivers(a.recipient);
}

/**
 * An envelope address as Postfix delivers it (its trivial-rewrite, with its defaults), where a listener refuses the
 * spelling (501 5.1.3) and so no script ever saw it: given as the client wrote it, every compare of a script with
 * the name Postfix delivers to missed (a refused domain, a sender kept from outsiders) and the mail went through.
 * - A bang path without a domain, `blocked.example!r`, is `r@blocked.example` (swap_bangpath = yes): Postfix
 *   relays it there, while the script saw no domain at all.
 * - A domain's one trailing dot is dropped (resolve.c: not a second one, nor one right after the @):
 *   `r@blocked.example.` is delivered to blocked.example.
 * - A non-ASCII domain is the U-labels of its IDNA (UTS #46) mapping, as a listener gives an SMTPUTF8 one (and as
 *   Postfix maps it for its lookups): `r@<U+FF42>locked.example` and `r@BLOCKED.example` are r@blocked.example.
 *   An ASCII one stays as written (A-labels too), as in a listener's ASCII transaction; one IDNA refuses as well.
 */
// eslint-disable-next-line no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;

function asPostfixDelivers(address: string): string {
  const bang = address.includes('@') ? -1 : address.indexOf('!');
  const swapped = bang > 0 && bang < address.length - 1 ? `${address.slice(bang + 1)}@${address.slice(0, bang)}` : address;
  const undotted = !swapped.endsWith('.') || swapped.endsWith('..') || swapped.endsWith('@.') || !swapped.includes('@') ? swapped : swapped.slice(0, -1);
  const at = undotted.lastIndexOf('@');
  const domain = undotted.slice(at + 1);
  if (at < 0 || !NON_ASCII.test(domain)) return undotted;
  return `${undotted.slice(0, at + 1)}${envelopeDomain(domain, true) || domain}`;
}

const known = (v: string | undefined): string | null => (v && v !== 'unknown' ? v : null);

function envelopeAddress(address: string): EnvelopeAddress {
  const at = address.lastIndexOf('@');
  return {
    address,
    localPart: at < 0 ? address : address.slice(0, at),
    domain: at < 0 ? '' : address.slice(at + 1).toLowerCase(),
    asciiDomain: at < 0 ? '' : asciiDomain(address.slice(at + 1)),
    params: {},
  };
}

/** The connection facts of a request: Postfix's client, its SMTP server side and its TLS. */
export function connectionFacts(a: Record<string, string>, service: PolicyServiceConfig, generation: PolicyGeneration): ConnectionInfo {
  const cert: PostfixClientCertificate | null = withRevocation(postfixCertificate(a, service.fingerprintDigest), generation.revokedDevices);
  const pins = service.certificateIdentity.pins ? generation.tables.get(service.certificateIdentity.pins) : undefined;
  const remotePort = Number(a.client_port) || 0;
  return {
    id: `${service.name}:${a.client_address ?? ''}:${remotePort}`,
    source: 'postfix-policy',
    remoteAddress: a.client_address ?? '',
    remotePort,
    localAddress: a.server_address ?? '',
    localPort: Number(a.server_port) || 0,
    listener: service.name,
    helo: a.helo_name || null,
    auth: a.sasl_username ? { username: a.sasl_username, mechanism: (a.sasl_method || 'UNKNOWN').toUpperCase() } : null,
    tls: a.encryption_protocol ? {
      protocol: a.encryption_protocol, cipher: a.encryption_cipher ?? '', sni: a.tls_sni || null,
      mode: 'starttls', // Postfix does not say whether its smtpd runs in wrapper mode
    } : null,
    clientCertificate: cert,
    certificateIdentity: postfixCertificateIdentity(service, cert, pins),
  };
}

/** Every field of the facts: the sandbox sends them again whenever one differs. */
function factsKey(c: ConnectionInfo): string {
  const cert = c.clientCertificate as PostfixClientCertificate | null;
  return [
    c.id, c.localAddress, c.localPort, c.helo ?? '', c.auth ? `${c.auth.mechanism}:${c.auth.username}` : '',
    c.tls ? `${c.tls.protocol}/${c.tls.cipher}/${c.tls.sni ?? ''}` : '',
    cert ? `${cert.fingerprint.sha256 ?? cert.fingerprint.sha1 ?? cert.fingerprint.md5}/${cert.publicKeyFingerprint}/${cert.subject.dn}/${cert.issuer.dn}` : '',
    c.certificateIdentity ?? '',
  ].join('\n');
}

/** The attributes the connection facts are made of. */
const FACT_ATTRIBUTES = [
  'client_address', 'client_port', 'server_address', 'server_port', 'helo_name', 'sasl_username', 'sasl_method', 'encryption_protocol',
  'encryption_cipher', 'tls_sni', 'ccert_subject', 'ccert_issuer', 'ccert_fingerprint', 'ccert_pubkey_fingerprint',
] as const;

/**
 * The last connection facts of one policy connection: Postfix asks MAIL, RCPT (once per recipient) and DATA
 * of one SMTP session in a row on the same connection, with the same client attributes, so the facts (and the
 * sandbox's key for them) are built once per session rather than per request.
 */
export class FactsMemo {
  #generation: PolicyGeneration | null = null;
  #service: PolicyServiceConfig | null = null;
  #values: string[] = [];
  #facts: { connection: ConnectionInfo; key: string } | null = null;

  get(a: Record<string, string>, service: PolicyServiceConfig, generation: PolicyGeneration): { connection: ConnectionInfo; key: string } {
    if (this.#facts && generation === this.#generation && service === this.#service && this.#same(a)) return this.#facts;
    const values = FACT_ATTRIBUTES.map((n) => a[n] ?? '');
    const connection = Object.freeze(connectionFacts(a, service, generation));
    this.#facts = { connection, key: factsKey(connection) };
    this.#generation = generation;
    this.#service = service;
    this.#values = values;
    return this.#facts;
  }

  /** Whether `a` has the fact attributes of the last request (checked per request: no array built for it). */
  #same(a: Record<string, string>): boolean {
    for (let i = 0; i < FACT_ATTRIBUTES.length; i++) if ((a[FACT_ATTRIBUTES[i]!] ?? '') !== this.#values[i]) return false;
    return true;
  }
}

/**
 * The hook and context of a well-formed request, or null when its protocol_state has no hook. The context
 * holds `a` itself as `ctx.postfix.attributes` (the sandbox copies it): the caller must not change it.
 */
const NO_BODY_MESSAGE = Object.freeze({ token: NO_MESSAGE_BODY });

export function requestContext(
  a: Record<string, string>, service: PolicyServiceConfig, generation: PolicyGeneration, memo = new FactsMemo(), asHook?: HookName,
): RequestContext | null {
  const state = (a.protocol_state ?? '').toUpperCase();
  // `asHook`: an earlier stage's hook, decided on this request (earlier-stages.ts).
  const hook = asHook ?? hookOfState(state);
  if (!hook) return null;
  const { connection, key } = memo.get(a, service, generation);
  const postfix: PostfixPolicyRequest = {
    attributes: a, protocolState: state, instance: a.instance || null, queueId: a.queue_id || null,
    clientName: known(a.client_name), reverseClientName: known(a.reverse_client_name),
  };
  const sender = a.sender !== undefined && hook !== 'connect' && hook !== 'helo' ? envelopeAddress(a.sender) : null;
  const transaction = {
    id: a.queue_id ?? '',
    sender,
    // Postfix names the recipient at DATA only when there is exactly one.
    recipients: hook === 'data' && a.recipient ? [envelopeAddress(a.recipient)] : [],
  };
  let ctx: RequestContext['ctx'];
  let builtin: BuiltinRelayDecision | null = null;
  switch (hook) {
    case 'connect': ctx = { connection, postfix }; break;
    case 'helo': {
      // Asked at a later state (earlier-stages.ts), the command is the one protocol_name tells: SMTP after HELO.
      const command = state === 'HELO' || (state !== 'EHLO' && a.protocol_name?.toUpperCase() === 'SMTP') ? 'HELO' : 'EHLO';
      ctx = { connection, postfix, helo: { name: a.helo_name ?? '', command } };
      break;
    }
    case 'mailfrom':
      // Sender binding is Postfix's (smtpd_sender_login_maps): nothing to enforce here.
      ctx = { connection, postfix, transaction, address: envelopeAddress(a.sender ?? ''), builtin: { accepted: true, reason: 'not-enforced' } };
      break;
    case 'rcptto': {
      const address = envelopeAddress(a.recipient ?? '');
      const cert = connection.clientCertificate as PostfixClientCertificate | null;
      const relayTable = service.relayClientCertificatesTable ? generation.tables.get(service.relayClientCertificatesTable) : undefined;
      builtin = builtinRelay(address, {
        localDomains: generation.localDomains,
        localRecipients: generation.localRecipients,
        authenticated: connection.auth !== null,
        trustedCertificateMayRelay: (service.relayClientCertificates && !!cert?.verified) || listedForRelay(cert, relayTable),
      });
      ctx = { connection, postfix, transaction, address, builtin };
      break;
    }
    // ctx.message as on a listener, but Postfix sends no body: its text() says so (a script's own TypeError otherwise).
    default: ctx = { connection, postfix, transaction, data: { size: Number(a.size) || 0, headers: [] }, message: NO_BODY_MESSAGE };
  }
  return { hook, ctx, key, builtin };
}
