// What a test that used a guest leaves in the reports: which guest it ran with (every test), and
// the guest's evidence when it failed (annotations for the default and JUnit reporters,
// task.meta.guestlab for the JSON reporter, a file in GUESTLAB_EVIDENCE_DIR for CI artifacts).
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { TestAttachment, TestContext } from 'vitest';
import { readEnv } from '../env.ts';
import { formatEvidence, guestOrigin, type GuestEvidence } from '../guest/evidence.ts';
import type { StartedGuest } from '../guest/started-guest.ts';
import { log } from '../log.ts';

/** What guestlab records in `task.meta.guestlab` of a test that used a guest (JSON reporter). */
export interface GuestTestMeta {
  guests: { name: string; image: string; accel: string; bootMs: number; instanceId: string; clonedFrom?: string; template?: { key: string; built: boolean }; evidence?: GuestEvidence; kept?: string }[];
}

export type ReportContext = Pick<TestContext, 'task' | 'annotate'>;

/**
 * Records which guest a test ran with, for every test and not only failed ones: an annotation
 * (JUnit <property>, verbose reporter) and task.meta.guestlab (JSON reporter). CI reports can then
 * tell boot time and accelerator per test without parsing logs.
 */
export async function recordGuest(guest: StartedGuest, context: ReportContext): Promise<void> {
  const meta = context.task.meta as { guestlab?: GuestTestMeta };
  meta.guestlab ??= { guests: [] };
  if (meta.guestlab.guests.some((g) => g.instanceId === guest.instanceId)) return;
  meta.guestlab.guests.push({ name: guest.name, image: guest.image, accel: guest.accel, bootMs: guest.timings.cloudInitDoneMs, instanceId: guest.instanceId, ...(guest.clonedFrom ? { clonedFrom: guest.clonedFrom } : {}), ...(guest.timings.template ? { template: guest.timings.template } : {}) });
  const how = guestOrigin(guest);
  const message = `guest ${guest.name}: ${guest.image} on ${guest.accel}, ${how}, ready ${(guest.timings.cloudInitDoneMs / 1000).toFixed(1)}s after start (instance ${guest.instanceId})`;
  await annotateAfterResult(context, message, 'guestlab:guest');
}

/** Attaches the guest's evidence to a failed test: annotations (default and JUnit reporters), task.meta (JSON), GUESTLAB_EVIDENCE_DIR. */
export async function reportFailure(guest: StartedGuest, context: ReportContext): Promise<void> {
  await recordGuest(guest, context);
  const evidence = await guest.evidence();
  const entry = (context.task.meta as { guestlab: GuestTestMeta }).guestlab.guests.find((g) => g.instanceId === guest.instanceId);
  if (entry) entry.evidence = evidence;
  const text = formatEvidence(evidence);
  const file = await writeEvidenceFile(guest, context.task, text);
  const message = `guest ${guest.name} evidence${file ? ` (also in ${file})` : ''}\n${text}`;
  await annotateAfterResult(context, message, 'guestlab:evidence', { contentType: 'text/plain', body: text, bodyEncoding: 'utf-8' }, true);
}

/**
 * With GUESTLAB_EVIDENCE_DIR set, the evidence of each failed guest test also goes to a file there
 * (one per test and guest, 0600), for CI jobs to upload as an artifact.
 */
async function writeEvidenceFile(guest: StartedGuest, task: ReportContext['task'], text: string): Promise<string | undefined> {
  const dir = readEnv('GUESTLAB_EVIDENCE_DIR');
  if (!dir) return undefined;
  const names: string[] = [];
  for (let t: { name: string; suite?: { name: string; suite?: unknown } | undefined } | undefined = task; t; t = t.suite as typeof t) names.unshift(t.name);
  const title = [task.file?.name ?? '', ...names.filter((n) => n !== task.file?.name)].join(' > ');
  const slug = `${title} ${guest.name}`.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 150);
  const file = path.resolve(dir, `${slug}-${createHash('sha256').update(`${title}\0${guest.instanceId}`).digest('hex').slice(0, 8)}.txt`);
  try {
    await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    await fs.writeFile(file, `${title}\n${text}\n`, { mode: 0o600 });
    return file;
  } catch (error) {
    log.warn(`could not write evidence to ${file}: ${(error as Error).message}`);
    return undefined;
  }
}

/**
 * Vitest refuses annotate() once a test's state has left "run", yet evidence of a failure can only
 * be gathered after the failure, and a shared guest's record only in afterEach. The state is set
 * back to "run" for the synchronous check only; if a Vitest version refuses anyway, evidence goes
 * to the test's stderr instead (a guest record is simply left out).
 */
async function annotateAfterResult(context: ReportContext, message: string, type: string, attachment?: TestAttachment, stderrFallback = false): Promise<void> {
  const result = context.task.result as { state: string } | undefined;
  const state = result?.state;
  let pending: Promise<unknown>;
  try {
    if (result) result.state = 'run';
    pending = attachment ? context.annotate(message, type, attachment) : context.annotate(message, type);
  } catch (error) {
    pending = Promise.reject(error as Error);
  } finally {
    if (result && state !== undefined) result.state = state;
  }
  await pending.catch(() => {
    if (stderrFallback) process.stderr.write(`${message}\n`);
  });
}
