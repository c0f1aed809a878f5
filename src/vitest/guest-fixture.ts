// guestFixture(): a guest for test.extend(), stopped (or kept, GUESTLAB_KEEP=on-failure) at the end
// of its scope, booted fresh or cloned from a template this process shares between declarations.
import { afterAll, afterEach, type TestContext } from 'vitest';
import { keepMode } from '../guest/keep.ts';
import { specFrom, startGuest } from '../guest/start.ts';
import { loadFixture, resolveSpec, type GuestSpec, type ResolvedSpec } from '../guest/spec.ts';
import { GuestTemplate, templateKey } from '../guest/template.ts';
import type { StartedGuest } from '../guest/started-guest.ts';
import { log } from '../log.ts';
import { checkGuestFixture, type DeclaredSpec, type FixturePair, type GuestFixtureOptions } from './options.ts';
import { recordGuest, reportFailure } from './report.ts';

type FixtureContext = Partial<Pick<TestContext, 'signal' | 'task' | 'annotate'>>;
export type GuestFixtureFn = (context: FixtureContext, use: (guest: StartedGuest) => Promise<void>) => Promise<void>;

/** What guestFixture() returns: `test.extend({ vm: guestFixture(...) })` types `vm` as a StartedGuest. */
export type GuestFixture = FixturePair<GuestFixtureFn, StartedGuest>;

/**
 * A fixture that boots a guest for `test.extend`:
 *   const test = base.extend({ vm: guestFixture({ image: 'debian-12' }) })
 * The guest is stopped at the end of its scope, whether the tests passed or not. When a test that
 * used it fails, the guest's evidence (serial console, cloud-init output, journal warnings) is
 * attached to that test; with GUESTLAB_KEEP=on-failure the guest is kept running instead of stopped.
 * A string names a spec in fixtures/NAME.yaml. The spec, the options and the GUESTLAB_* variables
 * are checked here, when the file is collected.
 */
export function guestFixture(spec: GuestSpec | string, options?: GuestFixtureOptions): GuestFixture {
  const { scope, clone: cloneOption, template: templateOption, declared } = checkGuestFixture(spec, options);
  let current: StartedGuest | undefined;
  // The first failed test of each guest of this fixture: only a guest whose own test failed is kept.
  const failedTests = new WeakMap<StartedGuest, string>();
  // With clone: true, one template per fixture declaration, booted by the first test that needs it
  // and released when the file is done. A template that failed to boot fails every test that asks
  // for it, at once.
  const clone = cloneOption ?? scope === 'test';
  let template: SharedTemplate | undefined;
  // Resolved once per declaration: a spec without a name gets one random name for all its clones.
  let resolved: Promise<DeclaredSpec> | undefined = declared && Promise.resolve(declared);
  const start = async (signal: AbortSignal | undefined): Promise<StartedGuest> => {
    const startOptions = { ...(signal ? { signal } : {}), ...(templateOption === undefined ? {} : { template: templateOption }) };
    if (!clone) return startGuest(spec, startOptions);
    resolved ??= loadFixture(spec as string).then((raw) => ({ spec: resolveSpec(raw), anyName: raw.name === undefined }));
    const { spec: resolvedSpec, anyName } = await resolved;
    template ??= acquireTemplate(resolvedSpec, anyName, templateOption);
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
          if (!failedTests.has(current)) failedTests.set(current, task.name);
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
        failedTests.set(guest, task.name);
        await reportFailure(guest, { task, annotate });
      }
    } finally {
      current = undefined;
      await finish(guest, failedTests.get(guest));
    }
  };
  // Vitest reads the first parameter's destructuring pattern to learn what a fixture uses. A
  // test-scoped guest takes the test's `signal` (a test that times out stops its boot at once),
  // `task` and `annotate`; file and worker scopes have no test of their own and use nothing.
  const fixture: GuestFixtureFn =
    scope === 'test' ? async ({ signal, task, annotate }, use) => run({ signal, task, annotate }, use) : async ({}, use) => run({}, use);
  return [fixture, { scope }] as unknown as GuestFixture;
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

function acquireTemplate(spec: ResolvedSpec, anyName: boolean, cache: boolean | undefined): SharedTemplate {
  const key = `${templateKey(spec, { anyName })}${cache === false ? '-uncached' : ''}`;
  let shared = templates.get(key);
  if (!shared) {
    const abort = new AbortController();
    // From the template cache where the spec allows it (then release() leaves its files there).
    const options = { signal: abort.signal, ...(cache === undefined ? {} : { template: cache }) };
    const template = specFrom(spec).then(async (full) => (await GuestTemplate.fromCache(full, anyName, options))?.template ?? GuestTemplate.create(full, options));
    shared = { key, abort, users: 0, template };
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
