// The command line a guest command becomes on the SSH path, and what error messages show of it:
// every word quoted, and environment values (often tokens) never in a message.
import { describe, expect, test } from 'vitest';
import { commandLine, runCommand, runOnAgentOrSession } from '../../src/guest/commands.ts';
import type { SshSession } from '../../src/ssh/session.ts';
import type { RawExecOptions } from '../../src/ssh/raw-exec.ts';

describe('commandLine', () => {
  test('sudo, timeout, env and cwd around the quoted argv', () => {
    expect(commandLine(['printenv', 'TOKEN'], { sudo: true, timeoutMs: 5000, env: { TOKEN: 'a b' }, cwd: '/tmp/x y' })).toBe(
      "cd '/tmp/x y' && sudo -n -- timeout -k 2 5 env 'TOKEN=a b' printenv TOKEN",
    );
  });

  test('a first word with "=" is refused before anything runs: sudo, env and the shell would take it for an assignment and run the next word', async () => {
    for (const options of [{}, { sudo: true }, { env: { A: '1' } }]) {
      expect(() => commandLine(['FOO=bar', 'id'], options)).toThrow(/`argv\[0\]` to name a program, got "FOO=bar".*Pass variables in `env`/);
    }
    // The agent path refuses it too, so that argv means the same on both.
    await expect(runOnAgentOrSession({}, 'root', ['./FOO=bar'], {})).rejects.toThrow(/argv\[0\].*"\.\/FOO=bar"/);
    // Later words are arguments and keep their "=".
    expect(commandLine(['env', 'FOO=bar', 'id'], {})).toBe('env FOO=bar id');
  });

  test('the redacted line shows each environment value as ***', () => {
    const line = commandLine(['printenv', 'TOKEN'], { env: { TOKEN: 's3cret-value', MODE: 'x' } }, true);
    expect(line).toBe("env 'TOKEN=***' 'MODE=***' printenv TOKEN");
    expect(line).not.toContain('s3cret');
  });

  test('runCommand sends the real line and labels it redacted for messages; without env there is no label', async () => {
    const calls: { command: string; options: RawExecOptions }[] = [];
    const session = {
      run: async (command: string, options: RawExecOptions) => {
        calls.push({ command, options });
        return { stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), exitCode: 0, signal: undefined, timedOut: false };
      },
    } as unknown as SshSession;
    await runCommand(session, ['printenv', 'TOKEN'], { env: { TOKEN: 's3cret-value' } });
    await runCommand(session, ['true'], {});
    expect(calls[0]!.command).toBe('env TOKEN=s3cret-value printenv TOKEN');
    expect(calls[0]!.options.label).toBe("env 'TOKEN=***' printenv TOKEN");
    expect(calls[1]!.options.label).toBeUndefined();
  });
});

describe('messages about a command on its own SSH channel', () => {
  test('name it by its label: an aborted command with a secret in its environment', async () => {
    const { EventEmitter } = await import('node:events');
    const { execOnChannel } = await import('../../src/ssh/channel.ts');
    const channel = Object.assign(new EventEmitter(), { stderr: new EventEmitter(), end: () => undefined, close: () => undefined });
    const client = { exec: (_command: string, callback: (error: Error | undefined, channel: unknown) => void) => callback(undefined, channel) };
    const abort = new AbortController();
    const running = execOnChannel(client as never, "env 'TOKEN=s3cret-value' printenv TOKEN", { signal: abort.signal, label: "env 'TOKEN=***' printenv TOKEN" }, { lost: () => undefined, inFlight: new Set() });
    abort.abort(new Error('test over'));
    const error = (await running.catch((e: unknown) => e)) as Error;
    expect(error.message).toContain("env 'TOKEN=***' printenv TOKEN");
    expect(error.message).not.toContain('s3cret');
  });
});
