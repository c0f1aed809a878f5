// A fresh boot from the image: the host and image, new keys, an overlay, the private networks, a
// cloud-init seed, QEMU, and the readiness requirements up to cloud-init's end.
import { AbortedError, CloudInitError } from '../../errors.ts';
import { CLOUD_INIT_OFF, cloudInitNeeded, writeSetupEntries } from '../../cloud-init/fw-cfg-setup.ts';
import { writeSeedIso } from '../../cloud-init/seed.ts';
import { createOverlay, createVarStore } from '../../disk/qemu-img.ts';
import { findOvmf } from '../../host/firmware.ts';
import { probeHost } from '../../host/probe.ts';
import { ensureImage } from '../../images/builder.ts';
import { networkForGuest } from '../../network/network.ts';
import { nicSocket } from '../instance.ts';
import { sweepOnce } from '../../reaper/sweep.ts';
import { generateEd25519 } from '../../ssh/keys.ts';
import { writePrivateFile } from '../../util/fs.ts';
import { chooseAccel } from '../accel.ts';
import { DEFAULT_BOOT_TIMEOUT_MS } from '../spec.ts';
import { budgetStep, diskSpaceStep, instanceStep, monitorStep, qemuStep, sshForwardStep } from './common.ts';
import { runOnAgentOrSession } from '../commands.ts';
import { agentForSeed, agentStep, installedAgentStep } from './agent.ts';
import { mountImagesStep, mountStep } from './mounts.ts';
import { bootFailure, settle, sshAuthStep, sshBannerStep } from './readiness.ts';
import { need, sinceStart, type LaunchState, type LaunchStep } from './steps.ts';

export const hostStep: LaunchStep = {
  name: 'host',
  description: 'check the host and choose the accelerator (KVM where usable, TCG otherwise)',
  hint: '`guestlab doctor` says what the host lacks and which package brings it',
  async run(state) {
    const host = await probeHost();
    state.accel = chooseAccel(state.spec.accel, host.kvm);
    state.machine = host.q35Machine;
    state.bootTimeoutMs = state.spec.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS[state.accel];
  },
};

export const sweepStep: LaunchStep = {
  name: 'sweep',
  description: 'remove what dead test runs left behind (QEMU processes, instance directories, leases)',
  hint: '`guestlab ps` lists what runs; `guestlab gc` sweeps by hand',
  async run(state) {
    await sweepOnce(state.log);
  },
};

export const imageStep: LaunchStep = {
  name: 'image',
  description: 'make sure the base image is built (or downloaded) and intact',
  hint: '`guestlab image ls` lists the images; `guestlab image build NAME --force` rebuilds one',
  async run(state) {
    const built = await ensureImage(state.spec.image, { log: state.log, signal: state.signal });
    state.image = built;
    // Looked up before the budget and the instance: a host without OVMF fails at once.
    if ((state.spec.firmware ?? built.firmware) === 'uefi') state.ovmf = await findOvmf();
    state.timings.imageReadyMs = sinceStart(state);
  },
};

export const keysStep: LaunchStep = {
  name: 'keys',
  description: 'make the guest’s own SSH client key and host key',
  hint: 'the instance directory must be writable',
  async run(state) {
    const instance = need(state.instance, 'instance');
    const client = generateEd25519(`guestlab@${instance.id}`);
    const host = generateEd25519(`root@${state.spec.name}`);
    await writePrivateFile(instance.file('clientKey'), client.privateKey);
    state.keys = { clientPrivateKey: client.privateKey, clientPublicKey: client.publicKey, hostPrivateKey: host.privateKey, hostPublicKey: host.publicKey };
  },
};

export const diskStep: LaunchStep = {
  name: 'disk',
  description: 'create the guest’s copy-on-write overlay on the image (and its UEFI variable store)',
  hint: '`guestlab image verify` checks the image; qemu-img must be installed (`guestlab doctor`)',
  async run(state) {
    const instance = need(state.instance, 'instance');
    const built = need(state.image, 'image');
    const { ovmf } = state;
    await createOverlay(built.disk, instance.file('overlay'), state.signal);
    if (ovmf) await createVarStore(ovmf.vars, instance.file('efiVars'), state.signal);
    state.media = {
      ...state.media,
      disk: instance.file('overlay'),
      kernel: built.kernel && built.initrd && built.cmdline ? { kernel: built.kernel, initrd: built.initrd, cmdline: built.cmdline } : undefined,
      uefi: ovmf && { code: ovmf.code, vars: instance.file('efiVars') },
    };
  },
};

/** A port and an address on each private network the spec joins (eth1, eth2, ... in its order), recorded in the launch. */
export async function attachNetworks(state: LaunchState): Promise<void> {
  const instance = need(state.instance, 'instance');
  for (const [i, wanted] of state.spec.networks.entries()) {
    const network = networkForGuest(wanted.name);
    const attachment = await network.attach(state.spec.name, instance.id, `eth${i + 1}`, nicSocket(instance, i), wanted.address);
    (state.resources.networks ??= []).push(network);
    state.attachments.push(attachment);
  }
}

export const networksStep: LaunchStep = {
  name: 'networks',
  description: 'take a port and an address on each private network the spec joins',
  hint: 'create the network first (createNetwork or networkFixture) and check its subnet has room',
  run: attachNetworks,
};

export const seedStep: LaunchStep = {
  name: 'seed',
  description: 'write the guest’s setup: the cloud-init seed (NoCloud ISO: user, keys, host key, network, the guest agent on an image without one, cloudConfig), or fw_cfg entries when cloud-init has nothing to do',
  hint: 'check the spec’s cloudConfig; the ISO tool (xorriso or genisoimage) must be installed (`guestlab doctor`)',
  async run(state) {
    const instance = need(state.instance, 'instance');
    const keys = need(state.keys, 'keys');
    const image = need(state.image, 'image');
    const { spec } = state;
    const setup = {
      hostname: spec.name,
      user: spec.user,
      authorizedKey: need(keys.clientPublicKey, 'client public key'),
      hostKey: { privateKey: need(keys.hostPrivateKey, 'host key'), publicKey: keys.hostPublicKey },
    };
    if (!cloudInitNeeded(image, spec)) {
      const kernel = need(state.media?.kernel, 'direct kernel boot');
      state.cloudInit = 'skipped';
      state.media = {
        ...state.media,
        fwCfg: [...(state.media?.fwCfg ?? []), ...(await writeSetupEntries(instance.dir, setup))],
        kernel: { ...kernel, cmdline: `${kernel.cmdline} ${CLOUD_INIT_OFF}` },
      };
      return;
    }
    const agent = await agentForSeed(state);
    await writeSeedIso(instance.file('seed'), { ...setup, instanceId: instance.id, cloudConfig: spec.cloudConfig, privateNics: state.attachments, agent }, state.signal);
    state.cloudInit = 'ran';
    state.agentInSeed = agent !== undefined;
    state.media = { ...state.media, seed: instance.file('seed') };
  },
};

export const cloudInitStep: LaunchStep = {
  name: 'cloud-init',
  description: 'wait until cloud-init has finished, and check that it succeeded (when it was left off: until systemd has finished the boot)',
  hint: 'the error lists cloud-init’s status and the end of /var/log/cloud-init-output.log; check the cloudConfig entries it names',
  async run(state) {
    const { spec, signal } = state;
    if (state.cloudInit === 'skipped') {
      // Without cloud-init, sshd is up before systemd has started the rest of the boot: wait for
      // the boot to finish (running, or degraded), as waiting for cloud-init's end did, so that
      // no test races units still starting.
      const deadline = need(state.deadline, 'deadline');
      const argv = ['systemctl', 'is-system-running', '--wait'];
      const options = { timeoutMs: Math.max(1000, deadline - Date.now()), ...(signal ? { signal } : {}) };
      await settle(state, 'boot', (async () => {
        const result = await runOnAgentOrSession(state.resources, spec.user, argv, options);
        if (result.timedOut) throw await bootFailure(state, 'boot', `did not finish booting within ${state.bootTimeoutMs} ms (systemctl is-system-running: ${result.stdout.trim()})`, { timedOut: true });
      })());
      state.timings.cloudInitDoneMs = sinceStart(state);
      return;
    }
    const session = need(state.resources.session, 'SSH session');
    const deadline = need(state.deadline, 'deadline');
    await settle(state, 'cloud-init', (async () => {
      const status = await session.exec('cloud-init status --wait --long', { timeoutMs: Math.max(1000, deadline - Date.now()), signal });
      if (signal?.aborted) throw new AbortedError(`Starting guest ${spec.name} (waiting for cloud-init)`, { cause: signal.reason });
      const statusText = status.stdout.toString('utf8');
      if (status.timedOut) throw await bootFailure(state, 'cloud-init', `did not finish cloud-init within ${state.bootTimeoutMs} ms`, { timedOut: true });
      const result = /^status:\s*(\S+)/m.exec(statusText)?.[1];
      if (result !== 'done') {
        const output = await session.exec('sudo -n tail -n 40 /var/log/cloud-init-output.log', { timeoutMs: 10_000 }).catch(() => undefined);
        const detail = `${statusText.trim()}\n--- /var/log/cloud-init-output.log (last lines) ---\n${output?.stdout.toString('utf8').trim() ?? '(unavailable)'}`;
        throw new CloudInitError(`cloud-init finished with status "${result ?? 'unknown'}" in guest ${spec.name}; check the cloudConfig entries named below.\n${detail}`, detail);
      }
    })());
    state.timings.cloudInitDoneMs = sinceStart(state);
  },
};

/** Every step of a fresh boot, in order. */
export { qemuStep };

export const FRESH_BOOT: readonly LaunchStep[] = [
  hostStep, sweepStep, imageStep, diskSpaceStep, budgetStep, instanceStep, keysStep, diskStep, networksStep, seedStep,
  mountImagesStep, qemuStep, monitorStep, sshForwardStep, sshBannerStep, sshAuthStep,
  // An image's own agent answers once sshd does; one that cloud-init installs, once cloud-init is done.
  agentStep, cloudInitStep, installedAgentStep,
  mountStep,
];
