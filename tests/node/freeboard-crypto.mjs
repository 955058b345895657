// The application's own code path for credential secrets, as Freeboard runs it with
// node:crypto: what the extension must stay compatible with, in both directions.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

export function parseKey(base64Key) {
  const key = Buffer.from(base64Key, 'base64');
  if (key.length !== 32) throw new Error('CREDENTIAL_ENCRYPTION_KEY must be 32 bytes of base64');
  return key;
}

export function sealSecret(secretObject, key) {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  const ciphertext = Buffer.concat([
    cipher.update(JSON.stringify(secretObject), 'utf8'),
    cipher.final(),
  ]);
  return {
    algorithm: 'aes-256-gcm',
    keyId: 'v1',
    iv: iv.toString('base64'),
    ciphertext: ciphertext.toString('base64'),
    authTag: cipher.getAuthTag().toString('base64'),
  };
}

// Returns the exact plaintext text; throws if the envelope does not open with the key.
export function openSecretText(envelope, key) {
  if (envelope.algorithm !== 'aes-256-gcm') throw new Error('unsupported algorithm');
  const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(envelope.iv, 'base64'));
  decipher.setAuthTag(Buffer.from(envelope.authTag, 'base64'));
  return Buffer.concat([
    decipher.update(Buffer.from(envelope.ciphertext, 'base64')),
    decipher.final(),
  ]).toString('utf8');
}

export function openSecret(envelope, key) {
  return JSON.parse(openSecretText(envelope, key));
}
