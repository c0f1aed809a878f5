// Compiled by fixture-types.test.ts (and by `npm run typecheck`): it stops compiling when
// `test.extend({ vm: guestFixture(...) })` no longer types the fixtures without a type argument.
import { expectTypeOf, test as base } from 'vitest';
import type { GuestNetwork, StartedGuest } from '../../src/index.ts';
import { guestFixture, networkFixture } from '../../src/vitest/index.ts';

const test = base.extend({
  vm: guestFixture({ image: 'debian-12' }),
  fresh: guestFixture('debian-basic', { scope: 'test' }),
  lan: networkFixture('lan', { subnet: '10.77.9.0/24' }),
});

test('each fixture has its own type, beside vitest\'s context', ({ vm, fresh, lan, task }) => {
  expectTypeOf(vm).toEqualTypeOf<StartedGuest>();
  expectTypeOf(fresh).toEqualTypeOf<StartedGuest>();
  expectTypeOf(lan).toEqualTypeOf<GuestNetwork>();
  expectTypeOf(task.name).toEqualTypeOf<string>();
});

const chained = test.extend({ db: guestFixture({ image: 'debian-12' }, { scope: 'worker' }) });
chained('a chained extend keeps the earlier fixtures\' types', ({ vm, db }) => {
  expectTypeOf(vm).toEqualTypeOf<StartedGuest>();
  expectTypeOf(db).toEqualTypeOf<StartedGuest>();
});

// The explicit type argument of older suites still compiles.
const explicit = base.extend<{ vm: StartedGuest }>({ vm: guestFixture({ image: 'debian-12' }) });
explicit('an explicit type argument still works', ({ vm }) => {
  expectTypeOf(vm).toEqualTypeOf<StartedGuest>();
});

// The pair's call signature exists for TypeScript's inference only: it cannot be called.
// @ts-expect-error its context is `never`
void guestFixture({ image: 'debian-12' })({}, async () => {});
