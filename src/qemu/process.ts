// Launching and ending QEMU. The only place that spawns it. Each QEMU is tied to the process that
// started it through a parent-death signal, so a crashed or SIGKILLed test runner takes its guests
// with it.
import { execa, type ResultPromise } from 'execa';
import { QemuError, tailLines } from '../errors.ts';
import { DEBIAN_PACKAGES, probeHost, requireTool } from '../host/probe.ts';
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
  /** The last lines QEMU wrote to stdout/stderr. */
  outputTail(lines?: number): string;
  kill(signal?: NodeJS.Signals): void;
}

export async function launchQemu(argv: string[], log: Logger): Promise<QemuProcess> {
  const host = await probeHost();
  const qemu = requireTool(host.qemu, DEBIAN_PACKAGES.qemu, 'to run guests');
  const [file, args] = host.setpriv.path
    ? [host.setpriv.path, ['--pdeathsig', 'KILL', '--', qemu, ...argv]]
    : [qemu, argv];
  if (!host.setpriv.path) log.warn('setpriv (util-linux) not found: QEMU will not die with its parent if this process is killed');
  log.debug(`exec ${qemu} ${argv.join(' ')}`);

  let output = '';
  const subprocess: ResultPromise = execa(file, args, {
    reject: false,
    buffer: false,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    cleanup: true,
  });
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-16_384);
  };
  subprocess.stdout?.on('data', keep);
  subprocess.stderr?.on('data', keep);
  const pid = subprocess.pid;
  if (pid === undefined) {
    const result = await subprocess;
    throw new QemuError(`QEMU could not be started: ${result.message ?? 'unknown error'}`);
  }
  let hasExited = false;
  const exited = subprocess.then(
    (result) => {
      hasExited = true;
      return { exitCode: result.exitCode, signal: result.signal };
    },
    () => {
      hasExited = true;
      return { exitCode: undefined, signal: undefined };
    },
  );
  return {
    pid,
    exited,
    get hasExited() {
      return hasExited;
    },
    outputTail: (lines = 20) => tailLines(output, lines),
    kill: (signal = 'SIGKILL') => {
      if (!hasExited) subprocess.kill(signal);
    },
  };
}

export function describeExit(exit: QemuExit): string {
  return exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.exitCode}`;
}
