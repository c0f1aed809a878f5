// What a host directory needs as an ext4 image: walked once before mkfs.ext4 runs, so that what
// mkfs.ext4 -d would choke on (a socket, a FIFO, a device, an unreadable file) is refused with its
// path, and the image is sized from the tree instead of a guess. Symlinks are counted, not followed.
import { constants as fsConstants, type Dirent } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';

/** The block size images are made with (pinned on mkfs's command line). */
export const BLOCK_SIZE = 4096;
const INODE_SIZE = 256;
const BLOCKS_PER_GROUP = BLOCK_SIZE * 8;
/** The longest extent ext4 makes (initialized), and how many an inode holds without an index block. */
const MAX_EXTENT_BLOCKS = 32_768;
const EXTENTS_IN_INODE = 4;
/** Symlink targets shorter than this live in the inode itself (fast symlinks). */
const FAST_SYMLINK_MAX = 60;
/** Inodes ext4 reserves (1-10) plus lost+found and the root directory. */
const RESERVED_INODES = 12;

export interface TreeStats {
  /** Every inode the image needs below the root: files, directories, symlinks (hard links once). */
  entries: number;
  files: number;
  directories: number;
  symlinks: number;
  /** Apparent size of the regular files (hard-linked data once). */
  dataBytes: number;
  /** Blocks for data, extent index, directory and long-symlink blocks. */
  blocks: number;
}

export interface ImageGeometry {
  sizeBytes: number;
  inodes: number;
}

const ceil = (n: number, d: number) => Math.ceil(n / d);

function refuseKind(entry: Dirent, file: string): never {
  const kind = entry.isSocket() ? 'a socket' : entry.isFIFO() ? 'a FIFO' : entry.isBlockDevice() ? 'a block device' : entry.isCharacterDevice() ? 'a character device' : 'not a file, directory or symlink';
  throw new Error(`Cannot mount a directory that holds ${kind}: ${file}. Move it out of the directory, or mount a directory without it`);
}

const unreadable = (file: string, error: unknown) =>
  new Error(`Cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}) for the guest's image of its directory: make it readable by this user or move it out of the directory`, { cause: error });

/** Walks `root` (not following symlinks) and adds up what its ext4 image needs; throws naming the first path that cannot go in. */
export async function measureTree(root: string): Promise<TreeStats> {
  const stats: TreeStats = { entries: 0, files: 0, directories: 0, symlinks: 0, dataBytes: 0, blocks: 0 };
  const seenLinks = new Set<string>();
  // Root reads every file (access() would only cost a system call per file).
  const isRoot = process.getuid?.() === 0;
  const pending = [root];
  for (let dir = pending.pop(); dir !== undefined; dir = pending.pop()) {
    let entries: Dirent[];
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch (error) {
      throw unreadable(dir, error);
    }
    // "." and ".." take 12 bytes each; a name takes 8 bytes plus itself, rounded to 4. Leaf blocks are
    // not packed full once the directory grows an index, hence the half again.
    const dirBytes = 24 + entries.reduce((sum, e) => sum + 8 + ceil(Buffer.byteLength(e.name), 4) * 4, 0);
    stats.blocks += ceil(dirBytes * 1.5, BLOCK_SIZE);
    await Promise.all(entries.map(async (entry) => {
      const file = path.join(dir, entry.name);
      if (entry.isDirectory()) {
        stats.entries++;
        stats.directories++;
        pending.push(file);
      } else if (entry.isSymbolicLink()) {
        stats.entries++;
        stats.symlinks++;
        const target = await fs.readlink(file, { encoding: 'buffer' }).catch((error: unknown) => {
          throw unreadable(file, error);
        });
        if (target.length >= FAST_SYMLINK_MAX) stats.blocks += 1;
      } else if (entry.isFile()) {
        const info = await fs.lstat(file);
        if (!isRoot) {
          await fs.access(file, fsConstants.R_OK).catch((error: unknown) => {
            throw unreadable(file, error);
          });
        }
        stats.files++;
        if (info.nlink > 1) {
          const key = `${info.dev}:${info.ino}`;
          if (seenLinks.has(key)) return;
          seenLinks.add(key);
        }
        stats.entries++;
        stats.dataBytes += info.size;
        const blocks = ceil(info.size, BLOCK_SIZE);
        const extents = ceil(blocks, MAX_EXTENT_BLOCKS);
        stats.blocks += blocks + (extents > EXTENTS_IN_INODE ? ceil(extents, 340) + 1 : 0);
      } else {
        refuseKind(entry, file);
      }
    }));
  }
  return stats;
}

/**
 * Size and inode count of an image for `stats` (pure). Data and directories as measured; inode tables,
 * bitmaps, group descriptors and superblock backups per block group; lost+found's 4 blocks; then a
 * tenth and 2 MiB of slack, rounded up to a MiB. The image file is sparse: slack costs no host disk.
 */
export function imageGeometry(stats: TreeStats): ImageGeometry {
  const inodes = stats.entries + RESERVED_INODES + 16;
  const inodeTableBlocks = ceil(inodes * INODE_SIZE, BLOCK_SIZE);
  const base = stats.blocks + inodeTableBlocks + 4 + 1;
  const groups = ceil(base, BLOCKS_PER_GROUP) + 1;
  // sparse_super keeps superblock + descriptors in groups 0, 1 and powers of 3, 5, 7: a few dozen at most.
  const backups = 2 + [3, 5, 7].reduce((sum, b) => sum + Math.max(0, Math.floor(Math.log(groups) / Math.log(b))), 0);
  const metadata = groups * 2 + backups * (1 + ceil(groups * 64, BLOCK_SIZE)) + 64;
  const blocks = Math.ceil((base + metadata) * 1.1) + ceil(2 * 1024 * 1024, BLOCK_SIZE);
  const mib = ceil(blocks * BLOCK_SIZE, 1024 * 1024);
  return { sizeBytes: mib * 1024 * 1024, inodes };
}
