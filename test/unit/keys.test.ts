import { execFileSync } from 'node:child_process';
import { createPrivateKey, createPublicKey, randomBytes, verify } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import ssh2 from 'ssh2';
import { describe, expect, test } from 'vitest';
import { ed25519FromRaw, fingerprint, generateEd25519, publicKeyBlob } from '../../src/ssh/keys.ts';

const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

function publicKeyOf(seed: Buffer): Buffer {
  const key = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: 'der', type: 'pkcs8' });
  return Buffer.from(createPublicKey(key).export({ format: 'jwk' }).x!, 'base64url');
}

/** A seed whose key has the leading zero byte(s) that ssh2's generator used to strip. */
function seedWhere(accept: (seed: Buffer, publicKey: Buffer) => boolean): { seed: Buffer; publicKey: Buffer } {
  for (;;) {
    const seed = randomBytes(32);
    const publicKey = publicKeyOf(seed);
    if (accept(seed, publicKey)) return { seed, publicKey };
  }
}

/** The length fields of the public blob: [type, key]. */
function blobFieldLengths(blob: Buffer): number[] {
  const typeLength = blob.readUInt32BE(0);
  return [typeLength, blob.readUInt32BE(4 + typeLength)];
}

const hasSshKeygen = (() => {
  try {
    execFileSync('ssh-keygen', ['-?'], { stdio: 'ignore' });
    return true;
  } catch (error) {
    return (error as { status?: number }).status !== undefined;
  }
})();

async function sshKeygenPublicOf(privateKey: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-keys-'));
  try {
    const file = path.join(dir, 'key');
    await fs.writeFile(file, privateKey, { mode: 0o600 });
    return execFileSync('ssh-keygen', ['-y', '-f', file], { encoding: 'utf8' }).trim();
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

describe('ed25519 keys in OpenSSH format', () => {
  const cases = {
    'a public key starting with 0x00': seedWhere((_, pub) => pub[0] === 0),
    'a seed starting with 0x00': seedWhere((seed) => seed[0] === 0),
    'neither': seedWhere((seed, pub) => seed[0] !== 0 && pub[0] !== 0),
  };

  test.each(Object.entries(cases))('%s: 32-byte fields, parsed by ssh2, signs what node:crypto verifies', (_, { seed, publicKey }) => {
    const pair = ed25519FromRaw(seed, publicKey, 'root@web');
    const blob = publicKeyBlob(pair.publicKey);
    expect(blobFieldLengths(blob)).toEqual([11, 32]);
    expect(pair.publicKey).toMatch(/^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]+=* root@web$/);

    const parsed = ssh2.utils.parseKey(pair.privateKey);
    if (parsed instanceof Error) throw parsed;
    const key = Array.isArray(parsed) ? parsed[0]! : parsed;
    expect(key.type).toBe('ssh-ed25519');
    expect(key.comment).toBe('root@web');
    expect(key.getPublicSSH()).toEqual(blob);
    const data = Buffer.from('guestlab');
    const signature = key.sign(data) as Buffer;
    const nodePublic = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: publicKey.toString('base64url') }, format: 'jwk' });
    expect(verify(null, data, nodePublic, signature)).toBe(true);
  });

  test.runIf(hasSshKeygen).each(Object.entries(cases))('%s: OpenSSH loads the private key and derives the same public key', async (_, { seed, publicKey }) => {
    const pair = ed25519FromRaw(seed, publicKey, 'root@web');
    expect(await sshKeygenPublicOf(pair.privateKey)).toBe(pair.publicKey);
  });

  test('a thousand generated keys all have a 32-byte public key that ssh2 parses (one in 128 did not)', () => {
    for (let i = 0; i < 1000; i++) {
      const pair = generateEd25519(`guestlab@${i}`);
      const blob = publicKeyBlob(pair.publicKey);
      expect(blobFieldLengths(blob)).toEqual([11, 32]);
      const parsed = ssh2.utils.parseKey(pair.privateKey);
      expect(parsed).not.toBeInstanceOf(Error);
      expect(ssh2.utils.parseKey(pair.publicKey)).not.toBeInstanceOf(Error);
    }
  });

  test('refuses raw keys of the wrong size', () => {
    expect(() => ed25519FromRaw(Buffer.alloc(31), Buffer.alloc(32), 'x')).toThrow(/32 bytes each, got 31 and 32/);
  });

  test('fingerprints as OpenSSH prints them', () => {
    const { seed, publicKey } = cases.neither;
    const pair = ed25519FromRaw(seed, publicKey, '');
    expect(fingerprint(publicKeyBlob(pair.publicKey))).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  });
});
