// A clone restored from a template's saved state: an overlay of its own on the template's frozen
// overlay, a QEMU started with -incoming, its own SSH port, and, once it runs, the host's wall-clock
// time and fresh randomness (a clone must not repeat its siblings' random numbers).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { AbortedError, GuestlabError } from '../../errors.ts';
import { createOverlay } from '../../disk/qemu-img.ts';
import { ensureImage } from '../../images/builder.ts';
import type { AgentClient } from '../../agent/client.ts';
import type { Logger } from '../../log.ts';
import type { SshSession } from '../../ssh/session.ts';
import { quoteArg } from '../../util/shell-quote.ts';
import { writePrivateFile } from '../../util/fs.ts';
import type { InstanceDir } from '../instance.ts';
import type { GuestMount } from '../mounts.ts';
import { budgetStep, diskSpaceStep, instanceStep, monitorStep, qemuStep, sshForwardStep } from './common.ts';
import { settle, sshAuthStep, sshBannerStep } from './readiness.ts';
import { agentConnectStep, agentStep } from './agent.ts';
import { joinNetworksStep } from './join-networks.ts';
import { runAsRootOnAgentOrSession } from '../commands.ts';
import { need, sinceStart, type BootMedia, type LaunchState, type LaunchStep } from './steps.ts';

/**
 * The in-guest half of a clone's fix-up, as root: the host's time, then fresh randomness mixed into
 * the kernel's pool and a forced reseed of its generator (RNDRESEEDCRNG), so that clones restored
 * from one state do not hand out the same random numbers. perl is in every Debian (perl-base);
 * python3 where there is no perl.
 */
const FIXUP_SCRIPT = [
  'date -u -s "@$1" >/dev/null || exit',
  'if command -v perl >/dev/null; then',
  `  exec perl -e 'open(my $f, ">", "/dev/urandom") or die "/dev/urandom: $!\\n"; syswrite($f, pack("H*", $ARGV[0])) or die "write: $!\\n"; ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!\\n"' "$2"`,
  'elif command -v python3 >/dev/null; then',
  `  exec python3 -c 'import fcntl, sys; f = open("/dev/urandom", "wb", buffering=0); f.write(bytes.fromhex(sys.argv[1])); fcntl.ioctl(f, 0x5207)' "$2"`,
  'else echo "neither perl nor python3 to reseed the RNG" >&2; exit 3; fi',
].join('\n');

/**
 * The fast path of the same fix-up. Before the template is saved, a root process waits on a FIFO
 * that only the guest's user may write; every clone is restored with that process still waiting.
 * The clone then writes the time and the seed into the FIFO from its command shell (shell builtins:
 * no sudo, no new SSH session) and reads the waiter's answer from a second FIFO.
 */
export const RESUME_DIR = '/run/guestlab';
export const RESUME_WAITER = [
  'set -e',
  `install -d -m 0755 ${RESUME_DIR}`,
  `rm -f ${RESUME_DIR}/resume ${RESUME_DIR}/resumed`,
  `mkfifo -m 0620 ${RESUME_DIR}/resume`,
  `mkfifo -m 0640 ${RESUME_DIR}/resumed`,
  `chgrp "$1" ${RESUME_DIR}/resume ${RESUME_DIR}/resumed`,
  `exec systemd-run --quiet --unit=guestlab-resume --service-type=exec --property=CollectMode=inactive-or-failed perl -e "$2"`,
].join('\n');
export const RESUME_PERL = [
  `open(my $in, "<", "${RESUME_DIR}/resume") or die "resume: $!\\n";`,
  'my ($now, $seed) = split(" ", scalar(<$in>) // "");',
  'my $error = "";',
  '$error = "bad request" unless defined $seed && $now =~ /^[0-9.]+$/ && $seed =~ /^[0-9a-f]+$/;',
  '$error ||= "date failed" if system("date", "-u", "-s", "\\@$now") != 0;',
  'if (!$error) { if (open(my $r, ">", "/dev/urandom")) { $error = "RNDRESEEDCRNG: $!" unless syswrite($r, pack("H*", $seed)) && ioctl($r, 0x5207, 0); } else { $error = "/dev/urandom: $!"; } }',
  `open(my $out, ">", "${RESUME_DIR}/resumed") or die "resumed: $!\\n";`,
  'print $out ($error ? "error: $error\\n" : "ok\\n");',
].join(' ');

/** What a clone needs of its template. */
export interface TemplateBase {
  readonly id: string;
  readonly instance: InstanceDir;
  readonly statePath: string;
  readonly clientPrivateKey: string;
  readonly hostPublicKey: string;
  /** The guest's hostname in the saved state; a clone of another name renames its guest. */
  readonly hostname: string;
  readonly kernel: BootMedia['kernel'];
  /** The template's cloud-init seed or fw_cfg setup entries: the clone's QEMU has the same devices. */
  readonly seed: BootMedia['seed'];
  readonly fwCfg: BootMedia['fwCfg'];
  /** The template's mount images: the clone's guest has them mounted already, as the template saw them. */
  readonly mounts: readonly GuestMount[];
  readonly cloudInit: LaunchState['cloudInit'];
  /** The template's UEFI firmware; the clone copies its variable store. */
  readonly uefi: BootMedia['uefi'];
  /** A root process waits in the saved state to fix up each clone (the fast path). */
  readonly resumeWaiter: boolean;
  /** cloud-init installed the guest agent (an image without one): it runs in the saved state too. */
  readonly agentInstalled?: boolean | undefined;
}

/** The clone steps for one template. */
export function cloneSteps(template: TemplateBase): readonly LaunchStep[] {
  const from = template.instance;
  const image: LaunchStep = {
    name: 'image',
    description: 'check that the image the template stands on is still there and intact',
    hint: '`guestlab image verify` checks the cache; a template must be made again after its image was rebuilt',
    async run(state) {
      // A start through the template cache checked it a moment ago, to compute the key.
      state.image ??= await ensureImage(state.spec.image, { log: state.log, signal: state.signal });
      state.timings.imageReadyMs = sinceStart(state);
    },
  };
  const disk: LaunchStep = {
    name: 'disk',
    description: 'create the clone’s overlay on the template’s frozen overlay, with the template’s keys, console and variable store',
    hint: 'the template’s instance directory must still exist (was the template released?)',
    async run(state) {
      const instance = need(state.instance, 'instance');
      await writePrivateFile(instance.file('clientKey'), template.clientPrivateKey);
      await createOverlay(from.file('overlay'), instance.file('overlay'), state.signal);
      // The clone's console continues the template's, so that its evidence shows the boot.
      await fs.copyFile(from.file('serial'), instance.file('serial'));
      await fs.chmod(instance.file('serial'), 0o600);
      // UEFI: the variable store as the template left it (pflash is not in the saved state).
      if (template.uefi) {
        await fs.copyFile(from.file('efiVars'), instance.file('efiVars'));
        await fs.chmod(instance.file('efiVars'), 0o600);
      }
      state.keys = { clientPrivateKey: template.clientPrivateKey, hostPublicKey: template.hostPublicKey };
      state.cloudInit = template.cloudInit;
      state.agentInSeed = template.agentInstalled === true;
      state.mounts.push(...template.mounts);
      state.media = {
        disk: instance.file('overlay'),
        seed: template.seed,
        fwCfg: template.fwCfg,
        scsiDisks: template.mounts.map((m) => ({ id: m.serial, file: m.file, serial: m.serial })),
        kernel: template.kernel,
        uefi: template.uefi && { code: template.uefi.code, vars: instance.file('efiVars') },
        // The saved state leaves out the RAM in the template's memory file (x-ignore-shared): the
        // clone maps that file copy-on-write instead of loading a copy.
        incoming: { uri: `exec:cat ${quoteArg(template.statePath)}`, ignoreShared: true },
        memoryFile: { path: from.file('memory'), shared: false },
        serialAppend: true,
      };
    },
  };
  const restore: LaunchStep = {
    name: 'restore',
    description: 'load the template’s saved state into the clone’s QEMU and let it run',
    hint: 'QEMU must be the same build that saved the template; qemu.log in the instance directory has its words',
    async run(state) {
      const incoming = need(need(state.media, 'boot media').incoming, 'incoming state');
      await need(state.resources.monitor, 'monitor').receiveState(incoming.ignoreShared ? { uri: incoming.uri } : undefined, need(state.deadline, 'deadline'));
      state.timings.restoreMs = sinceStart(state);
    },
  };
  const fixup: LaunchStep = {
    name: 'fixup',
    description: 'set the clone’s clock to now and reseed its random number generator',
    hint: 'the guest needs perl or python3, and sudo for its user when the template has no resume waiter',
    async run(state) {
      const { agent } = state.resources;
      await settle(state, 'restore', agent ? fixupThroughAgent(state.spec.name, template, agent, state.signal) : fixupClone(state.spec.name, template, need(state.resources.session, 'SSH session'), state.signal, state.log));
      state.timings.cloudInitDoneMs = sinceStart(state);
    },
  };
  const hostname: LaunchStep = {
    name: 'hostname',
    description: 'give the guest its own name when it is not the template’s (hostname, /etc/hostname, /etc/hosts)',
    hint: 'the guest needs sudo for its user when it has no agent',
    async run(state) {
      const { name } = state.spec;
      if (name === template.hostname) return;
      const options = { timeoutMs: 60_000, ...(state.signal ? { signal: state.signal } : {}) };
      const result = await runAsRootOnAgentOrSession(state.resources, ['sh', '-c', RENAME_SCRIPT, 'sh', template.hostname, name], options);
      if (result.exitCode !== 0) throw new GuestlabError(`Guest ${name} (clone of ${template.id}) could not take its name (exit code ${result.exitCode}): ${result.stderr.trim()}`);
      state.timings.cloudInitDoneMs = sinceStart(state);
    },
  };
  return [image, diskSpaceStep, budgetStep, instanceStep, disk, qemuStep, monitorStep, agentConnectStep, restore, sshForwardStep, agentStep, unlessAgent(sshBannerStep), unlessAgent(sshAuthStep), fixup, hostname, joinNetworksStep];
}

/**
 * Renames the guest from $1 to $2 as cloud-init named it: the kernel's hostname, /etc/hostname, and
 * the words of /etc/hosts that are the old name or start with it and a dot (the FQDN). Shell
 * builtins only: in a guest just restored under TCG every program started costs a few hundred ms
 * (its code is not translated yet), so this starts none but the shell.
 */
const RENAME_SCRIPT = [
  'set -e',
  'old=$1 new=$2',
  "printf '%s\\n' \"$new\" > /proc/sys/kernel/hostname",
  "printf '%s\\n' \"$new\" > /etc/hostname",
  'hosts=',
  'while IFS= read -r line || [ -n "$line" ]; do',
  '  case $line in',
  '    *"$old"*)',
  '      set -f; out=',
  '      for word in $line; do',
  '        case $word in "$old") word=$new ;; "$old".*) word=$new.${word#"$old".} ;; esac',
  '        out="${out:+$out }$word"',
  '      done',
  '      set +f; line=$out ;;',
  '  esac',
  '  hosts="$hosts$line',
  '"',
  'done < /etc/hosts',
  "printf '%s' \"$hosts\" > /etc/hosts",
].join('\n');

/**
 * A clone whose agent answers needs no SSH wait: its sshd runs in the restored state (vm.ssh works at
 * once) and guestlab opens its own session when something needs it. The SSH timings are then the
 * agent's.
 */
function unlessAgent(step: LaunchStep): LaunchStep {
  return {
    ...step,
    description: `${step.description} (a clone whose agent answered: skipped)`,
    async run(state) {
      if (!state.resources.agent) return step.run(state);
      state.timings.sshBannerMs ??= sinceStart(state);
      state.timings.sshReadyMs ??= sinceStart(state);
    },
  };
}

/**
 * The fix-up through the agent, without starting a process in the guest: the agent sets the clock
 * to the host's (as the request leaves, so within the channel's one-way latency) and reseeds the
 * kernel's generator with fresh host randomness (RENEW).
 */
async function fixupThroughAgent(name: string, template: TemplateBase, agent: AgentClient, signal: AbortSignal | undefined): Promise<void> {
  if (signal?.aborted) throw new AbortedError(`Cloning guest ${name}`, { cause: signal.reason });
  await agent.renew(Date.now(), randomBytes(64)).catch((error: Error) => {
    throw new GuestlabError(`Guest ${name} (clone of ${template.id}) could not set its clock or reseed its RNG: ${error.message}`, { cause: error });
  });
}

async function fixupClone(name: string, template: TemplateBase, session: SshSession, signal: AbortSignal | undefined, log: Logger): Promise<void> {
  const seed = randomBytes(64).toString('hex');
  if (template.resumeWaiter) {
    const now = (Date.now() / 1000).toFixed(3);
    const answer = await session.run(`printf '%s %s\\n' ${now} ${seed} > ${RESUME_DIR}/resume && read -r answer < ${RESUME_DIR}/resumed && echo "$answer"`, { timeoutMs: 15_000, signal });
    if (answer.exitCode === 0 && answer.stdout.toString('utf8') === 'ok\n') return;
    log.debug(`clone of ${template.id}: the resume waiter did not answer (${answer.timedOut ? 'timed out' : answer.stdout.toString('utf8').trim() || `exit code ${answer.exitCode}`}); using sudo`);
  }
  // The clock and RNG fixup on a channel of its own while the command shell opens beside it:
  // both are the guest's first work after the restore, when TCG has nothing translated yet.
  const now = (Date.now() / 1000).toFixed(3);
  const [result] = await Promise.all([
    session.exec(`sudo -n sh -c ${quoteArg(FIXUP_SCRIPT)} sh ${now} ${seed}`, { timeoutMs: 60_000, signal }),
    session.run('true', { signal, stateless: true }),
  ]);
  if (signal?.aborted) throw new AbortedError(`Cloning guest ${name}`, { cause: signal.reason });
  if (result.exitCode !== 0) {
    throw new GuestlabError(`Guest ${name} (clone of ${template.id}) could not set its clock or reseed its RNG (exit code ${result.exitCode}): ${result.stderr.toString('utf8').trim()}`);
  }
}
