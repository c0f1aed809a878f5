import { execFileSync } from 'node:child_process';
import { describe, expect, test } from 'vitest';
import { quoteArg, quoteArgv } from '../../src/util/shell-quote.ts';

// Pieces that a shell would otherwise interpret: quotes, expansions, escapes, separators, globs.
const NASTY = ["'", '"', '$(id)', '`id`', '${HOME}', '\\', '\\\\n', '\n', '\t', ' ', ';', '&&', '|', '>', '<', '*', '?', '[a]', '~', '#', '!', '%', 'é', '日本', '🦀', '-n', '--', '=', ''];

function randomArg(seed: number): string {
  let state = seed * 2654435761 >>> 0;
  const next = () => (state = (state * 1103515245 + 12345) >>> 0);
  const parts: string[] = [];
  const count = next() % 6;
  for (let i = 0; i < count; i++) parts.push(next() % 3 === 0 ? String.fromCharCode(32 + (next() % 95)) : NASTY[next() % NASTY.length]!);
  return parts.join('');
}

describe('quoteArg', () => {
  test('leaves plain words readable and quotes everything else', () => {
    expect(quoteArg('ls')).toBe('ls');
    expect(quoteArg('/etc/os-release')).toBe('/etc/os-release');
    expect(quoteArg('')).toBe("''");
    expect(quoteArg("it's")).toBe(`'it'\\''s'`);
    expect(quoteArg('$(id)')).toBe("'$(id)'");
  });

  test('rejects NUL, which no argv can carry', () => {
    expect(() => quoteArg('a\0b')).toThrow(/NUL/);
  });

  test('rejects an empty argv and non-string members', () => {
    expect(() => quoteArgv([])).toThrow(/non-empty argv/);
    expect(() => quoteArgv([1 as unknown as string])).toThrow(/argv\[0\] to be a string/);
  });

  // Property: a real POSIX shell parsing the quoted line hands the program the original bytes.
  test.each(['sh', 'bash'])('%s parses quoted argv back to identical bytes (300 random cases)', (shell) => {
    const cases = [...NASTY.map((n) => [n, `x${n}y`]), ...Array.from({ length: 300 }, (_, i) => [randomArg(i + 1), randomArg(i + 1000)])];
    // One shell run for all cases; each case's output ends with a record separator (\036).
    const script = cases.map((args) => `printf '%s\\0' ${quoteArgv(args)}; printf '\\036'`).join('\n');
    const records = execFileSync(shell, ['-c', script]).toString('utf8').split('\x1e').slice(0, -1);
    expect(records).toHaveLength(cases.length);
    records.forEach((record, i) => expect(record.split('\0').slice(0, -1)).toEqual(cases[i]));
  });
});
