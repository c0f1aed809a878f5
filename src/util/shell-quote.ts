// POSIX shell quoting. Every argument becomes one single-quoted word, so a shell that parses the
// result sees exactly the original bytes: no expansion, no splitting, no globbing.

export function quoteArg(arg: string): string {
  if (arg.includes('\0')) throw new TypeError('A command argument cannot contain a NUL byte');
  if (arg !== '' && /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg)) return arg;
  return `'${arg.replaceAll("'", `'\\''`)}'`;
}

export function quoteArgv(argv: readonly string[]): string {
  if (argv.length === 0) throw new TypeError('Expected a non-empty argv array, got []');
  return argv.map((arg, i) => {
    if (typeof arg !== 'string') throw new TypeError(`Expected argv[${i}] to be a string, got ${typeof arg}`);
    return quoteArg(arg);
  }).join(' ');
}
