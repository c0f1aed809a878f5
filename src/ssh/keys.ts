// Per-guest ed25519 keys in OpenSSH format, and the fingerprints used to pin host keys.
//
// The keys come from node:crypto and are written in OpenSSH's own formats here, not by ssh2's
// generateKeyPairSync: that one strips leading zero bytes from the 32-byte public key (ssh2
// issues 1390 and 1513), so about one key in 128 (public key or seed starting with 0x00) was one
// OpenSSH cannot load. As a host key, sshd then found no usable key and failed at every start;
// as a client key, the guest refused it. Either way the boot waited out its timeout.
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';

export interface KeyPair {
  /** OpenSSH private key (PEM-like "OPENSSH PRIVATE KEY" block). */
  privateKey: string;
  /** One authorized_keys line: "ssh-ed25519 AAAA... comment". */
  publicKey: string;
}

const KEY_TYPE = 'ssh-ed25519';
const ED25519_BYTES = 32;

export function generateEd25519(comment: string): KeyPair {
  const jwk = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' });
  return ed25519FromRaw(Buffer.from(jwk.d!, 'base64url'), Buffer.from(jwk.x!, 'base64url'), comment);
}

/** The OpenSSH encodings of an ed25519 key given as its 32-byte seed and 32-byte public key. */
export function ed25519FromRaw(seed: Buffer, publicKey: Buffer, comment: string): KeyPair {
  if (seed.length !== ED25519_BYTES || publicKey.length !== ED25519_BYTES) {
    throw new RangeError(`An ed25519 seed and public key are ${ED25519_BYTES} bytes each, got ${seed.length} and ${publicKey.length}`);
  }
  const publicBlob = Buffer.concat([sshString(KEY_TYPE), sshString(publicKey)]);
  return {
    privateKey: openSshPrivateKey(publicBlob, seed, publicKey, comment),
    publicKey: `${KEY_TYPE} ${publicBlob.toString('base64')} ${comment}`.trim(),
  };
}

/**
 * PROTOCOL.key of OpenSSH: "openssh-key-v1\0", cipher and KDF "none", one public key, then the
 * private section (a repeated check integer, the key, the comment, padding 1, 2, 3... to the
 * 8-byte block size of the "none" cipher).
 */
function openSshPrivateKey(publicBlob: Buffer, seed: Buffer, publicKey: Buffer, comment: string): string {
  const check = randomBytes(4);
  const section = Buffer.concat([
    check,
    check,
    sshString(KEY_TYPE),
    sshString(publicKey),
    sshString(Buffer.concat([seed, publicKey])),
    sshString(comment),
  ]);
  const padding = Buffer.from(Array.from({ length: (8 - (section.length % 8)) % 8 }, (_, i) => i + 1));
  const body = Buffer.concat([
    Buffer.from('openssh-key-v1\0', 'latin1'),
    sshString('none'),
    sshString('none'),
    sshString(''),
    uint32(1),
    sshString(publicBlob),
    sshString(Buffer.concat([section, padding])),
  ]);
  const lines = body.toString('base64').match(/.{1,70}/g) ?? [];
  return `-----BEGIN OPENSSH PRIVATE KEY-----\n${lines.join('\n')}\n-----END OPENSSH PRIVATE KEY-----\n`;
}

function uint32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value);
  return buffer;
}

/** The SSH wire format's `string`: a 32-bit length, then the bytes. */
function sshString(value: string | Buffer): Buffer {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  return Buffer.concat([uint32(bytes.length), bytes]);
}

/** The wire-format blob of a public key line ("type base64 [comment]"). */
export function publicKeyBlob(publicKeyLine: string): Buffer {
  const [, base64] = publicKeyLine.trim().split(/\s+/);
  if (!base64) throw new TypeError(`Not an OpenSSH public key line: ${JSON.stringify(publicKeyLine.slice(0, 40))}`);
  return Buffer.from(base64, 'base64');
}

/** OpenSSH-style fingerprint: "SHA256:" + unpadded base64 of the blob's digest. */
export function fingerprint(blob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(blob).digest('base64').replace(/=+$/, '');
}
