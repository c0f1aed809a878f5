// The public API of 'guestlab/vitest': guest fixtures for test.extend(), failure evidence attached
// to failed tests, GUESTLAB_KEEP=on-failure, and the guest matchers (registered on import).
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, type TestAttachment, type TestContext } from 'vitest';
import { formatEvidence, type GuestEvidence } from '../guest/evidence.ts';
import { keepMode } from '../guest/keep.ts';
import { startGuest } from '../guest/start.ts';
import { loadFixture, resolveSpec, type GuestSpec, type ResolvedSpec } from '../guest/spec.ts';
import { GuestTemplate, templateKey } from '../guest/template.ts';
import type { StartedGuest } from '../guest/started-guest.ts';
import { log } from '../log.ts';
import { createNetwork, type GuestNetwork, type NetworkOptions } from '../network/network.ts';
import { expectOneOf } from '../util/validate.ts';
export { registerGuestMatchers, type HaveFileOptions, type HavePackageOptions, type HaveUserOptions, type ListenOnOptions } from './matchers.ts';

export type GuestFixtureScope = 'test' | 'file' | 'worker';

export interface GuestFixtureOptions {
  /** How long one guest lives: one test, one file (default), or one worker. */
  scope?: GuestFixtureScope;
  /**
   * Start each guest as a clone of a template booted once for this fixture (see GuestTemplate)
   * instead of a full boot: a fresh guest in a second or two. Default: true for scope 'test'
   * (unless the spec joins private networks, whose guests cannot be templates), false otherwise.
   */
  clone?: boolean;
}

type FixtureContext = Partial<Pick<TestContext, 'signal' | 'task' | 'annotate'>>;
export type GuestFixtureFn = (context: FixtureContext, use: (guest: StartedGuest) => Promise<void>) => Promise<void>;

/** What guestlab records in `task.meta.guestlab` of a test that used a guest (JSON reporter). */
export interface GuestTestMeta {
  guests: { name: string; image: string; accel: string; bootMs: number; instanceId: string; clonedFrom?: string; evidence?: GuestEvidence; kept?: string }[];
}

/**
 * A fixture that boots a guest for `test.extend`:
 *   const test = base.extend({ vm: guestFixture({ image: 'debian-12' }) })
 * The guest is stopped at the end of its scope, whether the tests passed or not. When a test that
 * used it fails, the guest's evidence (serial console, cloud-init output, journal warnings) is
 * attached to that test; with GUESTLAB_KEEP=on-failure the guest is kept running instead of stopped.
 * A string names a spec in fixtures/NAME.yaml.
 */
export function guestFixture(spec: GuestSpec | string, options: GuestFixtureOptions = {}): [GuestFixtureFn, { scope: GuestFixtureScope }] {
  const scope = options.scope === undefined ? 'file' : expectOneOf('scope', options.scope, ['test', 'file', 'worker'] as const);
  if (options.clone !== undefined && typeof options.clone !== 'boolean') throw new TypeError(`Expected \`clone\` to be true or false, got ${JSON.stringify(options.clone)}`);
  keepMode(); // a bad GUESTLAB_KEEP fails at collection, not after the first failure
  let current: StartedGuest | undefined;
  let failedTest: string | undefined;
  // With clone: true, one template per fixture declaration, booted by the first test that needs it
  // and released when the file is done. A template that failed to boot fails every test that asks
  // for it, at once.
  const clone = options.clone ?? scope === 'test';
  let template: SharedTemplate | undefined;
  let resolved: Promise<{ spec: ResolvedSpec; anyName: boolean }> | undefined;
  const start = async (signal: AbortSignal | undefined): Promise<StartedGuest> => {
    const startOptions = signal ? { signal } : {};
    if (!clone) return startGuest(spec, startOptions);
    // Resolved once per declaration: a spec without a name gets one random name for all its clones.
    resolved ??= (typeof spec === 'string' ? loadFixture(spec) : Promise.resolve(spec)).then((raw) => ({ spec: resolveSpec(raw), anyName: raw.name === undefined }));
    const { spec: resolvedSpec, anyName } = await resolved;
    // Asked for explicitly, a spec on private networks gets GuestTemplate's error; by default it boots fresh.
    if (!options.clone && resolvedSpec.networks.length) return startGuest(spec, startOptions);
    template ??= acquireTemplate(resolvedSpec, anyName);
    return (await template.template).clone(startOptions);
  };
  if (clone) {
    try {
      afterAll(async () => {
        const held = template;
        template = undefined;
        if (held) await releaseTemplate(held);
      });
    } catch {
      // Not declared while a test file is collected: the template goes when the process exits.
    }
  }

  // A shared (file or worker) guest learns of failures from an afterEach hook on the suite that
  // declares the fixture; a test-scoped guest sees its own test's result directly.
  if (scope !== 'test') {
    try {
      afterEach(async ({ task, annotate }) => {
        if (!current || current.stopped) return;
        await recordGuest(current, { task, annotate });
        if (task.result?.state === 'fail') {
          failedTest ??= task.name;
          await reportFailure(current, { task, annotate });
        }
      });
    } catch {
      // Not called while a test file is collected (e.g. from a config): no per-test evidence.
    }
  }

  const run = async (context: FixtureContext, use: (guest: StartedGuest) => Promise<void>) => {
    const guest = await start(context.signal);
    current = guest;
    try {
      const { task, annotate } = context;
      if (scope === 'test' && task && annotate) await recordGuest(guest, { task, annotate });
      await use(guest);
      if (scope === 'test' && task?.result?.state === 'fail' && annotate) {
        failedTest = task.name;
        await reportFailure(guest, { task, annotate });
      }
    } finally {
      current = undefined;
      await finish(guest, failedTest);
    }
  };
  // Vitest reads the first parameter's destructuring pattern to learn what a fixture uses. A
  // test-scoped guest takes the test's `signal` (a test that times out stops its boot at once),
  // `task` and `annotate`; file and worker scopes have no test of their own and use nothing.
  const fixture: GuestFixtureFn =
    scope === 'test' ? async ({ signal, task, annotate }, use) => run({ signal, task, annotate }, use) : async ({}, use) => run({}, use);
  return [fixture, { scope }];
}

interface SharedTemplate {
  key: string;
  template: Promise<GuestTemplate>;
  abort: AbortController;
  users: number;
}

/**
 * This process's templates by templateKey: fixtures declared with the same spec (in one file, or in
 * the files a non-isolated worker runs) share one template. A template outlives the test that
 * happened to boot it, so it takes no test's signal; its last fixture's afterAll aborts a boot
 * still running and removes it.
 */
const templates = new Map<string, SharedTemplate>();

function acquireTemplate(spec: ResolvedSpec, anyName: boolean): SharedTemplate {
  const key = templateKey(spec, { anyName });
  let shared = templates.get(key);
  if (!shared) {
    const abort = new AbortController();
    shared = { key, abort, users: 0, template: GuestTemplate.create(spec, { signal: abort.signal }) };
    shared.template.catch(() => undefined); // failures reach the tests that await it
    templates.set(key, shared);
  }
  shared.users++;
  return shared;
}

async function releaseTemplate(shared: SharedTemplate): Promise<void> {
  if (--shared.users > 0) return;
  templates.delete(shared.key);
  shared.abort.abort(new Error('no test file uses this template any more'));
  await (await shared.template.catch(() => undefined))?.release();
}

/** Stops the guest, or keeps it after a failure when GUESTLAB_KEEP=on-failure. */
async function finish(guest: StartedGuest, failedTest: string | undefined): Promise<void> {
  if (failedTest !== undefined && keepMode() === 'on-failure' && !guest.stopped) {
    try {
      // stderr, not the logger: this is for the person at the terminal whatever GUESTLAB_DEBUG says.
      process.stderr.write(`${await guest.keep(`test "${failedTest}" failed`)}\n`);
      return;
    } catch (error) {
      log.warn(`could not keep guest ${guest.name}: ${(error as Error).message}`);
    }
  }
  await guest.stop();
}

type ReportContext = Pick<TestContext, 'task' | 'annotate'>;

/**
 * Records which guest a test ran with, for every test and not only failed ones: an annotation
 * (JUnit <property>, verbose reporter) and task.meta.guestlab (JSON reporter). CI reports can then
 * tell boot time and accelerator per test without parsing logs.
 */
async function recordGuest(guest: StartedGuest, context: ReportContext): Promise<void> {
  const meta = context.task.meta as { guestlab?: GuestTestMeta };
  meta.guestlab ??= { guests: [] };
  if (meta.guestlab.guests.some((g) => g.instanceId === guest.instanceId)) return;
  meta.guestlab.guests.push({ name: guest.name, image: guest.image, accel: guest.accel, bootMs: guest.timings.cloudInitDoneMs, instanceId: guest.instanceId, ...(guest.clonedFrom ? { clonedFrom: guest.clonedFrom } : {}) });
  const how = guest.clonedFrom ? `cloned from template ${guest.clonedFrom}` : 'booted';
  const message = `guest ${guest.name}: ${guest.image} on ${guest.accel}, ${how}, ready ${(guest.timings.cloudInitDoneMs / 1000).toFixed(1)}s after start (instance ${guest.instanceId})`;
  await annotateAfterResult(context, message, 'guestlab:guest');
}

/** Attaches the guest's evidence to a failed test: annotations (default and JUnit reporters), task.meta (JSON), GUESTLAB_EVIDENCE_DIR. */
async function reportFailure(guest: StartedGuest, context: ReportContext): Promise<void> {
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
  const dir = process.env.GUESTLAB_EVIDENCE_DIR;
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

/**
 * A private network for test.extend, shared by name with the guests whose spec lists it:
 *   const test = base.extend({ lan: networkFixture('lan'), a: guestFixture({ image, networks: ['lan'] }) })
 * Fixtures may start in any order; the network lives until its fixture and every guest on it are done.
 */
export function networkFixture(name: string, options: Omit<NetworkOptions, 'name'> & { scope?: GuestFixtureScope } = {}): [NetworkFixtureFn, { scope: GuestFixtureScope }] {
  const { scope = 'file', ...networkOptions } = options;
  const fixture: NetworkFixtureFn = async ({}, use) => {
    const network = await createNetwork({ ...networkOptions, name });
    try {
      await use(network);
    } finally {
      network.close();
    }
  };
  return [fixture, { scope: expectOneOf('scope', scope, ['test', 'file', 'worker'] as const) }];
}

export type NetworkFixtureFn = (context: object, use: (network: GuestNetwork) => Promise<void>) => Promise<void>;

export type { StartedGuest, GuestSpec, GuestEvidence, GuestNetwork };
