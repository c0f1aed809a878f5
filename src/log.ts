// A debug-style logger: `GUESTLAB_DEBUG=1` (or DEBUG=guestlab*) prints every line; progress and
// warnings always go to stderr. Never pass keys or user-data here. The logger never throws over a
// bad variable (peekEnv): validateEnvironment() at the entry points reports it.
import { peekEnv } from './env.ts';

const debugEnabled = peekEnv('GUESTLAB_DEBUG') === true || /(^|,)\s*guestlab(\*|:|,|$)/.test(process.env.DEBUG ?? '');

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  child(prefix: string): Logger;
}

export function createLogger(prefix = 'guestlab', sink: (line: string) => void = (l) => process.stderr.write(l + '\n')): Logger {
  const start = Date.now();
  const stamp = () => `+${((Date.now() - start) / 1000).toFixed(1)}s`;
  return {
    debug(message) {
      if (debugEnabled) sink(`[${prefix}] ${stamp()} ${message}`);
    },
    info(message) {
      if (debugEnabled || peekEnv('GUESTLAB_QUIET') !== true) sink(`[${prefix}] ${message}`);
    },
    warn(message) {
      sink(`[${prefix}] warning: ${message}`);
    },
    child(sub) {
      return createLogger(`${prefix}:${sub}`, sink);
    },
  };
}

export const log = createLogger();
