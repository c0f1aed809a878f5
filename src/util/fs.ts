import fs from 'node:fs/promises';

export async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}

/** Create a directory only its owner can enter (0700), parents included. */
export async function makePrivateDir(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
}

/** Write a file only its owner can read (0600). */
export async function writePrivateFile(file: string, data: string | Uint8Array): Promise<void> {
  await fs.writeFile(file, data, { mode: 0o600 });
}
