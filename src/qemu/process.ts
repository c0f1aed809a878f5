// Launching and ending QEMU. The only place that spawns it. Each QEMU is tied to the process that
// started it through a parent-death signal, so a crashed or SIGKILLed test runner takes its guests
// with it; except a keepable QEMU (GUESTLAB_KEEP), which runs in its own session so that it can
// outlive the test run, and is reaped by the next sweep unless it was kept.
import { closeSync, openSync, readFileSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { QemuError, tailLines } from '../errors.ts';
import { DEBIAN_PACKAGES, probeQemu, probeSetpriv, requireTool } from '../host/probe.ts';
import type { Logger } from '../log.ts';

export interface QemuExit {
  exitCode: number | undefined;
  signal: string | undefined;
}

export interface QemuProcess {
  readonly pid: number;
  /** Settles when QEMU has exited, whatever the reason. Never rejects. */
  readonly exited: Promise<QemuExit>;
  readonly hasExited: boolean;
  /** How it exited, once it has. */
  readonly exit: QemuExit | undefined;
  /** The last lines QEMU wrote to stdout/stderr. */
  outputTail(lines?: number): string;
  kill(signal?: NodeJS.Signals): void;
  /** Started to be able to outlive this process (GUESTLAB_KEEP). */
  readonly keepable: boolean;
  /** Let this process exit while QEMU runs on (keepable QEMUs only). */
  detach(): void;
}

export interface LaunchOptions {
  /** QEMU's stdout and stderr go to this file. */
  outputFile: string;
  /** Run in a session of its own without a parent-death signal, so that the guest can be kept. */
  keepable?: boolean;
}

export async function launchQemu(argv: string[], log: Logger, options: LaunchOptions): Promise<QemuProcess> {
  const [{ qemu: qemuTool }, setpriv] = await Promise.all([probeQemu(), probeSetpriv()]);
  const qemu = requireTool(qemuTool, DEBIAN_PACKAGES.qemu, 'to run guests');
  const keepable = options.keepable ?? false;
  const [file, args] = setpriv.path && !keepable
    ? [setpriv.path, ['--pdeathsig', 'KILL', '--', qemu, ...argv]]
    : [qemu, argv];
  if (!setpriv.path) log.warn('setpriv (util-linux) not found: QEMU will not die with its parent if this process is killed');
  log.debug(`exec ${qemu} ${argv.join(' ')}`);

  // A file rather than a pipe: a kept QEMU must not lose its stderr when this process exits.
  // node:child_process rather than execa: QEMU's output goes straight to that file, and a kept
  // QEMU needs detached + unref().
  const outputFd = openSync(options.outputFile, 'a', 0o600);
  let child: ChildProcess;
  try {
    child = spawn(file, args, { stdio: ['ignore', outputFd, outputFd], detached: keepable });
  } finally {
    closeSync(outputFd);
  }
  const outputTail = (lines = 20) => {
    try {
      return tailLines(readFileSync(options.outputFile, 'utf8').slice(-16_384), lines);
    } catch {
      return '';
    }
  };
  let exit: QemuExit | undefined;
  const exited = new Promise<QemuExit>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = { exitCode: code ?? undefined, signal: signal ?? undefined };
      resolve(exit);
    });
    child.once('error', () => {
      exit = { exitCode: undefined, signal: undefined };
      resolve(exit);
    });
  });
  const pid = child.pid;
  if (pid === undefined) {
    const error = await new Promise<Error>((resolve) => child.once('error', resolve));
    throw new QemuError(`QEMU could not be started (${file}): ${error.message}`);
  }
  return {
    pid,
    exited,
    get hasExited() {
      return exit !== undefined;
    },
    get exit() {
      return exit;
    },
    outputTail,
    keepable,
    kill: (signal = 'SIGKILL') => {
      if (!exit) child.kill(signal);
    },
    detach: () => {
      if (!keepable) throw new Error('Only a keepable QEMU can be detached');
      child.unref();
    },
  };
}

export function describeExit(exit: QemuExit): string {
  return exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.exitCode}`;
}

/** The error for work that cannot go on because QEMU is gone, with QEMU's last output; undefined while it runs. */
export function exitedError(qemu: QemuProcess, during: string): QemuError | undefined {
  if (!qemu.exit) return undefined;
  return new QemuError(`QEMU ${describeExit(qemu.exit)} ${during}:\n${qemu.outputTail()}`);
}
