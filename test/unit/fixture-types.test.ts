// The fixtures' types, checked by the TypeScript compiler: fixture-types.test-d.ts must compile,
// and the same assertions against a plain [fixture, options] pair (what guestFixture returned
// before it carried its type) must not, which shows the check can fail.
import path from 'node:path';
import ts from 'typescript';
import { expect, test } from 'vitest';

const here = path.resolve('test/unit');
const checked = path.join(here, 'fixture-types.test-d.ts');
const regressed = path.join(here, 'fixture-types.regressed.ts');

const REGRESSED = `
import { expectTypeOf, test as base } from 'vitest';
import type { StartedGuest } from '../../src/index.ts';
import type { GuestFixtureFn } from '../../src/vitest/index.ts';
declare const plainPair: [GuestFixtureFn, { scope: 'file' }];
const test = base.extend({ vm: plainPair });
test('x', ({ vm }) => {
  expectTypeOf(vm).toEqualTypeOf<StartedGuest>();
});
`;

/** Compiles both files in one program (the second from memory) and returns each one's errors. */
function compile(): Map<string, string[]> {
  const parsed = ts.getParsedCommandLineOfConfigFile(path.resolve('tsconfig.json'), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => {
      throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
    },
  })!;
  const host = ts.createCompilerHost(parsed.options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (file, language, ...rest) =>
    path.resolve(file) === regressed ? ts.createSourceFile(file, REGRESSED, language) : getSourceFile(file, language, ...rest);
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (file) => path.resolve(file) === regressed || fileExists(file);
  const program = ts.createProgram([checked, regressed], parsed.options, host);
  const errors = new Map<string, string[]>([[checked, []], [regressed, []]]);
  for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
    const file = diagnostic.file ? path.resolve(diagnostic.file.fileName) : '(global)';
    const line = diagnostic.file && diagnostic.start !== undefined ? diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start).line + 1 : 0;
    const list = errors.get(file) ?? [];
    list.push(`${path.basename(file)}:${line}: ${ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n').split('\n')[0]}`);
    errors.set(file, list);
  }
  return errors;
}

test('test.extend({ vm: guestFixture(...) }) types vm as StartedGuest, and lan: networkFixture(...) as GuestNetwork, without a type argument', () => {
  const errors = compile();
  expect(errors.get(checked)).toEqual([]);
  // A regression of the pair's type shows up as a failed type assertion.
  expect(errors.get(regressed)).toEqual([expect.stringMatching(/fixture-types\.regressed\.ts:8: Type 'StartedGuest' does not satisfy the constraint/)]);
  expect([...errors.keys()]).toEqual([checked, regressed]);
}, 60_000);
