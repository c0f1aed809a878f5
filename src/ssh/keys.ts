// Per-guest ed25519 keys in OpenSSH format, and the fingerprints used to pin host keys.
import { createHash } from 'node:crypto';
import ssh2 from 'ssh2';

export interface KeyPair {
  /** OpenSSH private key (PEM-like "OPENSSH PRIVATE KEY" block). */
  privateKey: string;
  /** One authorized_keys line: "ssh-ed25519 AAAA... comment". */
  publicKey: string;
}

export function generateEd25519(comment: string): KeyPair {
  const pair = ssh2.utils.generateKeyPairSync('ed25519', { comment });
  return { privateKey: pair.private, publicKey: pair.public.trim() };
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
