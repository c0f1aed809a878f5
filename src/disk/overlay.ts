// Copy-on-write qcow2 overlay on a read-only base image.
import path from 'node:path';
import { DEBIAN_PACKAGES, probeHost, requireTool } from '../host/probe.ts';
import { run } from '../util/run.ts';

export async function createOverlay(base: string, overlay: string, signal?: AbortSignal): Promise<void> {
  const host = await probeHost();
  const qemuImg = requireTool(host.qemuImg, DEBIAN_PACKAGES.qemuImg, 'to create guest disks');
  // -F names the backing format explicitly: QEMU refuses to probe it, and probing a raw
  // backing file would be a security hole.
  await run(qemuImg, ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', path.resolve(base), overlay], { signal });
}
