// What a failed test needs to be diagnosed without a rerun: the serial console, cloud-init's
// output and the journal's warnings. Each part is collected on its own, so a guest whose SSH is
// gone still yields its console.
import { tailLines } from '../errors.ts';
import type { ExecOptions, ExecResult } from './types.ts';

export interface GuestEvidence {
  guest: string;
  image: string;
  accel: string;
  /** How the guest came up: "booted", "restored from template cache <key>" (and whether this start built it), "cloned from template <id>". */
  origin: string;
  /** Last lines of the serial console (read on the host, works even when SSH does not). */
  console: string;
  /** Last lines of /var/log/cloud-init-output.log. */
  cloudInit: string;
  /** This boot's journal entries of priority warning and worse (last lines). */
  journal: string;
}

export interface EvidenceSource {
  readonly name: string;
  readonly image: string;
  readonly accel: string;
  readonly stopped: boolean;
  /** `skipped`: cloud-init did not run on this boot, so it has no output to show. */
  readonly timings: { cloudInit?: 'ran' | 'skipped' | undefined; template?: { key: string; built: boolean } | undefined };
  readonly clonedFrom?: string | undefined;
  consoleLog(): Promise<string>;
  exec(argv: string[], options?: ExecOptions): Promise<ExecResult>;
}

export const EVIDENCE_LINES = { console: 60, cloudInit: 40, journal: 40 };
const EVIDENCE_COMMAND_TIMEOUT_MS = 20_000;

export async function collectEvidence(guest: EvidenceSource): Promise<GuestEvidence> {
  const fromGuest = async (argv: string[]): Promise<string> => {
    if (guest.stopped) return '(unavailable: the guest is stopped)';
    try {
      const result = await guest.exec(argv, { sudo: true, timeoutMs: EVIDENCE_COMMAND_TIMEOUT_MS });
      return (result.stdout + result.stderr).trim() || '(empty)';
    } catch (error) {
      return `(unavailable: ${(error as Error).message.split('\n')[0]})`;
    }
  };
  const [consoleText, cloudInit, journal] = await Promise.all([
    guest.consoleLog().catch(() => ''),
    guest.timings.cloudInit === 'skipped'
      ? Promise.resolve('(none: cloud-init was left off on this boot, the spec gave it nothing to do)')
      : fromGuest(['tail', '-n', String(EVIDENCE_LINES.cloudInit), '/var/log/cloud-init-output.log']),
    fromGuest(['journalctl', '-b', '-p', 'warning', '--no-pager', '-q', '-o', 'short-precise', '-n', String(EVIDENCE_LINES.journal)]),
  ]);
  return {
    guest: guest.name,
    image: guest.image,
    accel: guest.accel,
    origin: guestOrigin(guest),
    console: tailLines(consoleText, EVIDENCE_LINES.console) || '(empty)',
    cloudInit,
    journal,
  };
}

/** How a guest came up, in words: what evidence and test reports say. */
export function guestOrigin(guest: Pick<EvidenceSource, 'timings' | 'clonedFrom'>): string {
  const { template } = guest.timings;
  if (template) return `restored from template cache ${template.key}${template.built ? ' (built by this start: cold boot, then saved)' : ''}`;
  return guest.clonedFrom ? `cloned from template ${guest.clonedFrom}` : 'booted';
}

/** The evidence as one text block, sections headed the way they appear in reports. */
export function formatEvidence(evidence: GuestEvidence): string {
  return [
    `guest ${evidence.guest} (${evidence.image}, ${evidence.accel}, ${evidence.origin})`,
    `--- serial console (last ${EVIDENCE_LINES.console} lines) ---`,
    evidence.console,
    `--- /var/log/cloud-init-output.log (last ${EVIDENCE_LINES.cloudInit} lines) ---`,
    evidence.cloudInit,
    `--- journal, priority warning and worse (last ${EVIDENCE_LINES.journal} lines) ---`,
    evidence.journal,
  ].join('\n');
}
