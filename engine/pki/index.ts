/**
 * Device certificates from issue to revocation, and the pin tables: what `postern pki` / `postern pins`
 * and an account page call. Every change is a whole-file atomic write (the running server's reload picks
 * it up); nothing here needs the server to run. The server's side: sightings.ts (last seen) and expiry.ts.
 */
export { initCa, openCa, configLines, type InitCaOptions, type InitializedCa } from './ca.ts';
export { issueDevice, generatePassword, checkName, type IssueDeviceOptions, type IssuedDevice } from './issue.ts';
export { revokeDevice, refreshCrl, type RevokeSelector, type RevokeOptions, type RevokeResult } from './revoke.ts';
export { listDevices, type DeviceRow, type DeviceStatus, type ListDevicesOptions } from './devices.ts';
export { readInventory, normalizeSerial, type DeviceCertificate, type Inventory } from './inventory.ts';
export { addPin, removePin, listPins, pinOf, type AddPinOptions, type PinEntry, type RemovePinSelector } from './pins-file.ts';
export { certificateFacts, type CertificateFacts } from './certificate-facts.ts';
export { crlCopies, unloadedCrls, type UnloadedCrl } from './crl-coverage.ts';
export { revokedCertificateOfKey } from './revoked-devices.ts';
export { otherAccountsOfKey, type KeyClaim } from './key-claims.ts';
export { pkiDirOf, pinTableOf, pinTableFiles, deviceNames, type PinTableRef } from './locate.ts';
export { pkiPaths, KEY_TYPES, REVOCATION_REASONS, parseKeyType, parseReason, type DeviceKeyType, type PkiPaths, type RevocationReason } from './layout.ts';
export { SightingRecorder, readSightings, sightingsDir, SIGHTING_MS, MAX_NAMELESS_RECORDS, type Sighting } from './sightings.ts';
export { ExpiryWatch, recentCertificates, type ExpiringCertificate } from './expiry.ts';
