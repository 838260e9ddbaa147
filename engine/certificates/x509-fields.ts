/**
 * Reads the fields describe.ts reports straight from a certificate's DER: serial, validity, names as
 * RDNs, subject alternative names, the raw SubjectPublicKeyInfo and the key's type and size. It exists
 * for speed: a schema-driven parse (@peculiar/x509) costs milliseconds, node:crypto tens of microseconds.
 */
import { children, directoryString, malformed, oid, readTlv, time, unsignedBytes, type Tlv } from './der.ts';
import { ipv6Groups, ipv6Text } from '../addresses/ip-text.ts';

/** One attribute of a name. */
export interface NameAttribute {
  /** OpenSSL short name, or the dotted OID. */
  type: string;
  value: string;
  /** Not a string type: `value` is RFC 4514's `#` + hex of the whole DER value. */
  hex: boolean;
}

export interface CertificateFields {
  /** INTEGER magnitude, lowercase hex (as `openssl x509 -serial` prints it). */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** RDNs in DER order (least specific first); each RDN holds one or more attributes. */
  issuer: NameAttribute[][];
  subject: NameAttribute[][];
  san: { email: string[]; dns: string[]; ip: string[]; uri: string[] };
  /** The DER SubjectPublicKeyInfo exactly as in the certificate: what SPKI pins hash. */
  spki: Buffer;
  /** Node's asymmetricKeyType names (`rsa`, `ec`, `ed25519` …), or the algorithm OID when unknown. */
  keyType: string;
  /** RSA/DSA modulus bits, EC curve size, 256/448 for the Edwards curves; 0 when unknown. */
  keyBits: number;
}

/** OpenSSL's short names (what `openssl x509 -nameopt RFC2253` prints); others stay dotted OIDs. */
const SHORT_NAMES: Record<string, string> = {
  '2.5.4.3': 'CN', '2.5.4.4': 'SN', '2.5.4.5': 'serialNumber', '2.5.4.6': 'C', '2.5.4.7': 'L', '2.5.4.8': 'ST',
  '2.5.4.9': 'street', '2.5.4.10': 'O', '2.5.4.11': 'OU', '2.5.4.12': 'title', '2.5.4.13': 'description',
  '2.5.4.15': 'businessCategory', '2.5.4.17': 'postalCode', '2.5.4.41': 'name', '2.5.4.42': 'GN',
  '2.5.4.43': 'initials', '2.5.4.44': 'generationQualifier', '2.5.4.45': 'x500UniqueIdentifier',
  '2.5.4.46': 'dnQualifier', '2.5.4.65': 'pseudonym', '2.5.4.97': 'organizationIdentifier',
  '0.9.2342.19200300.100.1.1': 'UID', '0.9.2342.19200300.100.1.25': 'DC', '1.2.840.113549.1.9.1': 'emailAddress',
  '1.3.6.1.4.1.311.60.2.1.1': 'jurisdictionL', '1.3.6.1.4.1.311.60.2.1.2': 'jurisdictionST', '1.3.6.1.4.1.311.60.2.1.3': 'jurisdictionC',
};

/** SPKI algorithm OID → Node's key type name. */
const KEY_TYPES: Record<string, string> = {
  '1.2.840.113549.1.1.1': 'rsa', '1.2.840.113549.1.1.10': 'rsa-pss', '1.2.840.10045.2.1': 'ec', '1.2.840.10040.4.1': 'dsa',
  '1.3.101.110': 'x25519', '1.3.101.111': 'x448', '1.3.101.112': 'ed25519', '1.3.101.113': 'ed448',
  '2.16.840.1.101.3.4.3.17': 'ml-dsa-44', '2.16.840.1.101.3.4.3.18': 'ml-dsa-65', '2.16.840.1.101.3.4.3.19': 'ml-dsa-87',
};

/** Named curve OID → size in bits. */
const CURVE_BITS: Record<string, number> = {
  '1.2.840.10045.3.1.7': 256, '1.3.132.0.34': 384, '1.3.132.0.35': 521, '1.3.132.0.10': 256, '1.2.156.10197.1.301': 256,
  '1.3.36.3.3.2.8.1.1.7': 256, '1.3.36.3.3.2.8.1.1.11': 384, '1.3.36.3.3.2.8.1.1.13': 512,
};

const FIXED_BITS: Record<string, number> = { ed25519: 256, x25519: 256, ed448: 448, x448: 448 };

const SAN_OID = '2.5.29.17';

/**
 * The DER of the certificate's issuer Name as it is written (what a CRL's issuer is compared with), without
 * reading anything else: a lookup per handshake, on certificates a client may have built to be large.
 */
export function issuerNameDer(der: Uint8Array): Buffer {
  return tbsField(der, 2); // serialNumber, signature, issuer
}

/** The DER of the certificate's subject Name as it is written (a CA's, to find the CRLs it issued). */
export function subjectNameDer(der: Uint8Array): Buffer {
  return tbsField(der, 4); // serialNumber, signature, issuer, validity, subject
}

/** The TBSCertificate field at `index`, counted after the optional version. */
function tbsField(der: Uint8Array, index: number): Buffer {
  const buf = Buffer.isBuffer(der) ? der : Buffer.from(der.buffer, der.byteOffset, der.byteLength);
  const tbs = children(buf, readTlv(buf, 0, buf.length))[0] ?? malformed();
  let fields = children(buf, tbs);
  if (fields[0]?.tag === 0xa0) fields = fields.slice(1); // [0] EXPLICIT version
  const field = fields[index] ?? malformed();
  return buf.subarray(field.start, field.end);
}

export function readCertificate(der: Uint8Array): CertificateFields {
  const buf = Buffer.isBuffer(der) ? der : Buffer.from(der.buffer, der.byteOffset, der.byteLength);
  const certificate = readTlv(buf, 0, buf.length);
  const tbs = children(buf, certificate)[0] ?? malformed();
  let fields = children(buf, tbs);
  if (fields[0]?.tag === 0xa0) fields = fields.slice(1); // [0] EXPLICIT version
  // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, then optional [1] [2] [3]
  const [serial, , issuer, validity, subject, spki, ...optional] = fields;
  if (!serial || !issuer || !validity || !subject || !spki) malformed();
  const [notBefore, notAfter] = children(buf, validity!);
  const extensions = optional.find((t) => t.tag === 0xa3);
  return {
    serial: unsignedBytes(buf, serial!).toString('hex'),
    notBefore: time(buf, notBefore ?? malformed()),
    notAfter: time(buf, notAfter ?? malformed()),
    issuer: name(buf, issuer!),
    subject: name(buf, subject!),
    san: extensions ? subjectAltNames(buf, extensions) : { email: [], dns: [], ip: [], uri: [] },
    spki: buf.subarray(spki!.start, spki!.end),
    ...keyFacts(buf, spki!),
  };
}

function name(buf: Buffer, t: Tlv): NameAttribute[][] {
  return children(buf, t).map((rdn) => children(buf, rdn).map((atv): NameAttribute => {
    const [type, value] = children(buf, atv);
    if (!type || !value) malformed();
    const id = oid(buf, type!);
    const text = directoryString(buf, value!);
    return { type: SHORT_NAMES[id] ?? id, value: text ?? '#' + buf.toString('hex', value!.start, value!.end), hex: text === undefined };
  }));
}

/** The key type and size of a DER SubjectPublicKeyInfo, as a certificate's are read (a public key given on its own). */
export function spkiFacts(spkiDer: Buffer): { keyType: string; keyBits: number } {
  return keyFacts(spkiDer, readTlv(spkiDer, 0, spkiDer.length));
}

function keyFacts(buf: Buffer, spki: Tlv): { keyType: string; keyBits: number } {
  const [algorithm, bitString] = children(buf, spki);
  const [algorithmOid, parameters] = children(buf, algorithm ?? malformed());
  const id = oid(buf, algorithmOid ?? malformed());
  const keyType = KEY_TYPES[id] ?? id;
  if (keyType === 'ec') return { keyType, keyBits: parameters?.tag === 0x06 ? CURVE_BITS[oid(buf, parameters)] ?? 0 : 0 };
  if ((keyType === 'rsa' || keyType === 'rsa-pss') && bitString) {
    // BIT STRING: one byte of unused bits, then RSAPublicKey ::= SEQUENCE { modulus, publicExponent }
    const rsaKey = readTlv(buf, bitString.body + 1, bitString.end);
    return { keyType, keyBits: integerBits(unsignedBytes(buf, children(buf, rsaKey)[0] ?? malformed())) };
  }
  if (keyType === 'dsa' && parameters?.tag === 0x30) {
    return { keyType, keyBits: integerBits(unsignedBytes(buf, children(buf, parameters)[0] ?? malformed())) }; // Dss-Parms p
  }
  return { keyType, keyBits: FIXED_BITS[keyType] ?? 0 };
}

const integerBits = (magnitude: Buffer): number =>
  magnitude.length ? (magnitude.length - 1) * 8 + (32 - Math.clz32(magnitude[0]!)) : 0;

function subjectAltNames(buf: Buffer, extensions: Tlv): CertificateFields['san'] {
  const san: CertificateFields['san'] = { email: [], dns: [], ip: [], uri: [] };
  for (const ext of children(buf, children(buf, extensions)[0] ?? malformed())) {
    // Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
    const parts = children(buf, ext);
    if (!parts[0] || oid(buf, parts[0]) !== SAN_OID) continue;
    const octets = parts[parts.length - 1]!;
    for (const gn of children(buf, readTlv(buf, octets.body, octets.end))) {
      const text = (): string => buf.toString('latin1', gn.body, gn.end);
      if (gn.tag === 0x81) san.email.push(text()); // [1] rfc822Name
      else if (gn.tag === 0x82) san.dns.push(text()); // [2] dNSName
      else if (gn.tag === 0x86) san.uri.push(text()); // [6] uniformResourceIdentifier
      else if (gn.tag === 0x87) { // [7] iPAddress
        const bytes = buf.subarray(gn.body, gn.end);
        if (bytes.length === 4) san.ip.push(bytes.join('.'));
        else if (bytes.length === 16) san.ip.push(ipv6Text(ipv6Groups(bytes)));
      }
    }
  }
  return san;
}

