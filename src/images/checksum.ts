// Digests a download must match: pinned in a catalog entry (`sha256:HEX`), or listed in a
// distribution's checksum file. Pure parsing; download.ts does the hashing.

export type DigestAlgorithm = 'sha256' | 'sha512';

export interface Digest {
  algorithm: DigestAlgorithm;
  hex: string;
}

const HEX_LENGTH: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 };

/** `sha256:HEX` or `sha512:HEX`, as catalog entries write a pinned digest. */
export function parseDigest(text: string, where: string): Digest {
  const m = /^(sha256|sha512):([0-9a-fA-F]+)$/.exec(text.trim());
  const algorithm = m?.[1] as DigestAlgorithm | undefined;
  if (!m || !algorithm || m[2]!.length !== HEX_LENGTH[algorithm]) {
    throw new TypeError(`${where}: expected a digest like "sha256:<64 hex digits>" or "sha512:<128 hex digits>", got ${JSON.stringify(text)}`);
  }
  return { algorithm, hex: m[2]!.toLowerCase() };
}

export const formatDigest = (digest: Digest) => `${digest.algorithm}:${digest.hex}`;

/**
 * The digest of `fileName` in a checksum file: GNU style (`HEX  name`, `HEX *name`) as Debian,
 * Ubuntu and Alpine publish them, or BSD style (`SHA256 (name) = HEX`) as Fedora and Rocky do.
 * The algorithm comes from the BSD tag or from the length of the digest. A file that holds nothing
 * but one digest (a per-image NAME.sha256 as some projects publish) is that file's digest.
 */
export function findChecksum(text: string, fileName: string): Digest | undefined {
  const bare = /^\s*([0-9a-fA-F]{64}|[0-9a-fA-F]{128})\s*$/.exec(text);
  if (bare) return { algorithm: bare[1]!.length === 64 ? 'sha256' : 'sha512', hex: bare[1]!.toLowerCase() };
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    const bsd = /^(SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)$/.exec(line);
    if (bsd) {
      if (bsd[2] === fileName) return { algorithm: bsd[1]!.toLowerCase() as DigestAlgorithm, hex: bsd[3]!.toLowerCase() };
      continue;
    }
    const gnu = /^([0-9a-fA-F]{64}|[0-9a-fA-F]{128})\s+\*?(.+)$/.exec(line);
    if (gnu && (gnu[2] === fileName || gnu[2] === `./${fileName}`)) {
      return { algorithm: gnu[1]!.length === 64 ? 'sha256' : 'sha512', hex: gnu[1]!.toLowerCase() };
    }
  }
  return undefined;
}
