// Writes the NoCloud seed: an ISO9660 volume labelled `cidata` holding user-data and meta-data
// (and network-config, and the guest agent's binary for an image without one).
import fs from 'node:fs/promises';
import path from 'node:path';
import { DEBIAN_PACKAGES, probeHost, requireTool } from '../host/probe.ts';
import { writePrivateFile } from '../util/fs.ts';
import { run } from '../util/run.ts';
import { USER_NIC_MAC } from '../qemu/argv.ts';
import { AGENT_SEED_FILE, renderMetaData, renderNetworkConfig, renderUserData, type SeedInput } from './user-data.ts';

export async function writeSeedIso(isoPath: string, input: SeedInput, signal?: AbortSignal): Promise<void> {
  const host = await probeHost();
  const tool = requireTool(host.isoTool, DEBIAN_PACKAGES.isoTool, 'to write the cloud-init seed ISO');
  // Rendered before anything is written, so a bad cloudConfig fails without leaving files.
  const userData = renderUserData(input);
  const metaData = renderMetaData(input);
  const networkConfig = renderNetworkConfig(input, USER_NIC_MAC);
  const staging = `${isoPath}.d`;
  await fs.mkdir(staging, { mode: 0o700 });
  try {
    // user-data holds the guest's private host key: 0600 on disk, and gone once the ISO exists.
    await writePrivateFile(path.join(staging, 'user-data'), userData);
    await writePrivateFile(path.join(staging, 'meta-data'), metaData);
    const files = ['user-data', 'meta-data'];
    if (networkConfig) {
      await writePrivateFile(path.join(staging, 'network-config'), networkConfig);
      files.push('network-config');
    }
    // The guest agent for an image without one, beside user-data (see AGENT_SEED_FILE).
    if (input.agent) {
      await writePrivateFile(path.join(staging, AGENT_SEED_FILE), input.agent.binary);
      files.push(AGENT_SEED_FILE);
    }
    await run(tool, ['-quiet', '-output', isoPath, '-volid', 'cidata', '-joliet', '-rock', ...files.map((f) => path.join(staging, f))], { signal });
    await fs.chmod(isoPath, 0o600);
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
}
