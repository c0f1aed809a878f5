// Directories whose contents decide something for this user (the budget): created 0700, and refused
// when another user owns them or when they are a symbolic link, so that nobody else can plant,
// read or hold what is in them.
import fs from 'node:fs/promises';
import { UnsafeDirectoryError } from '../errors.ts';

export { UnsafeDirectoryError };

/** Creates `dir` (and its parents) for this user only; refuses one that is not safely this user's. */
export async function ensureOwnedPrivateDir(dir: string, envName: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const stat = await fs.lstat(dir);
  const fix = `private state there. Remove it, or point ${envName} at a directory of your own.`;
  if (stat.isSymbolicLink()) throw new UnsafeDirectoryError(dir, 'is a symbolic link', fix);
  if (!stat.isDirectory()) throw new UnsafeDirectoryError(dir, 'is not a directory', fix);
  const uid = process.getuid?.();
  if (uid !== undefined && stat.uid !== uid) throw new UnsafeDirectoryError(dir, `belongs to uid ${stat.uid}, not to this user (uid ${uid})`, fix);
  // Ours: tighten what is loose rather than refuse it.
  if ((stat.mode & 0o077) !== 0) await fs.chmod(dir, 0o700);
}

/** Writes a file whole or not at all (temp file + rename), mode 0600: a reader never sees half of it. */
export async function writeFileAtomic(file: string, data: string): Promise<void> {
  const temp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    await fs.writeFile(temp, data, { mode: 0o600 });
    await fs.rename(temp, file);
  } catch (error) {
    await fs.rm(temp, { force: true });
    throw error;
  }
}
