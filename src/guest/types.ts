// The shapes a started guest is described by, shared by its parts (commands, files, evidence,
// keep, rehearsal) so that none of them has to import StartedGuest itself.
import type { Readable, Writable } from 'node:stream';

export type { ExecResult } from '../exec-result.ts';

export interface ExecOptions {
  /** Bytes, text or a stream fed to the command's standard input (closed afterwards). */
  stdin?: string | Uint8Array | Readable;
  /** Stream the command's stdout here (with backpressure) instead of collecting it; `stdout` is then ''. */
  stdout?: Writable;
  /** Kill the command after this long; the result then has `timedOut: true`. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Run as root through passwordless sudo. */
  sudo?: boolean;
  /** Working directory inside the guest. */
  cwd?: string;
  /** Extra environment variables for the command. */
  env?: Record<string, string>;
  /**
   * Run on an SSH channel of its own instead of the guest's shared command shell. Commands with
   * `stdin` or a `stdout` stream always do. Use it for a command that leaves a background process
   * writing to its stdout or stderr: on the shared shell that output would go to later commands.
   */
  ownChannel?: boolean;
  /**
   * The channel to run on. Default: the guest agent when the guest has one (its image's, or on a
   * downloaded image the one cloud-init installed) and it answers (no network, no sshd, no login
   * session needed), SSH otherwise. `ssh`: always over SSH, for a command that needs what a login
   * brings (a PAM session, a systemd user instance). `agent`: fail instead of falling back to SSH.
   */
  via?: 'agent' | 'ssh';
}

export interface SshInfo {
  host: string;
  port: number;
  user: string;
  privateKeyPath: string;
  /** The pinned host key, an OpenSSH public key line ("ssh-ed25519 AAAA..."). */
  hostKey: string;
  /** A known_hosts file that pins the host key, for the ssh command line tool. */
  knownHostsPath: string;
}

/** How long each boot phase took, in ms from the start of startGuest(). */
export interface BootTimings {
  imageReadyMs: number;
  qemuStartedMs: number;
  sshBannerMs: number;
  sshReadyMs: number;
  /**
   * Ready: cloud-init done (or, when it was left off, SSH ready), or for a clone its state restored
   * and its clock and RNG renewed.
   */
  cloudInitDoneMs: number;
  /**
   * `ran`: cloud-init set the guest up. `skipped`: the spec gave it nothing to do (no cloudConfig,
   * no private networks), so guestlab's setup came through fw_cfg and cloud-init stayed off. A
   * clone reports its template's.
   */
  cloudInit?: 'ran' | 'skipped';
  /** A clone only: when the saved state had been loaded into its QEMU. */
  restoreMs?: number;
  /**
   * A guest restored from the template cache: the template's key, and whether this start built it
   * (a miss: the cold boot and the save came first, and the times include them).
   */
  template?: { key: string; built: boolean };
  /** How long each launch step took, by step name ("image", "budget", "qemu", "ssh-auth", ...). */
  steps?: Record<string, number>;
}

/** The guest's NIC on one private network. */
export interface GuestNetworkInfo {
  network: string;
  address: string;
  /** eth1, eth2, ... inside the guest. */
  interfaceName: string;
  mac: string;
}
