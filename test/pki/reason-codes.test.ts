/** The CRL reason codes the pki folder writes (numbers, RFC 5280 §5.3.1) are the X.509 library's. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { REVOCATION_REASONS } from '../../engine/pki/index.ts';
import { x509 } from '../../engine/certificates/x509-provider.ts';

test('every --reason name has the code the X.509 library gives it', () => {
  for (const [name, code] of Object.entries(REVOCATION_REASONS)) {
    assert.equal(code, x509.X509CrlReason[name as keyof typeof x509.X509CrlReason], name);
  }
});
