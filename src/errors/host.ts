// What the host and its configuration must provide before any guest can run: tools, a sane
// environment, directories of this user's own, locks.
import { GuestlabError } from './guestlab-error.ts';

/** A host tool or capability is missing; the message is the doctor's line for it. */
export class HostRequirementError extends GuestlabError {
  override name = 'HostRequirementError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: 'ERR_HOST_REQUIREMENT' });
  }
}

/** One GUESTLAB_* variable whose value guestlab refuses, and why. */
export interface EnvironmentProblem {
  /** The variable, e.g. GUESTLAB_BUDGET_CPUS. */
  variable: string;
  /** The value as it was set. */
  value: string;
  /** The whole sentence: the variable, its value, what is wrong and the fix. */
  message: string;
}

/** GUESTLAB_* variables hold values guestlab refuses; `problems` has one entry per variable. */
export class EnvironmentError extends GuestlabError {
  override name = 'EnvironmentError';
  readonly problems: readonly EnvironmentProblem[];
  constructor(problems: readonly EnvironmentProblem[]) {
    super(
      problems.length === 1
        ? problems[0]!.message
        : `${problems.length} GUESTLAB_* variables have values guestlab refuses:\n${problems.map((p) => `  - ${p.message}`).join('\n')}`,
      { code: 'ERR_ENVIRONMENT' },
    );
    this.problems = problems;
  }
}

/** A directory guestlab keeps private state in is not safely this user's (a symlink, another owner). */
export class UnsafeDirectoryError extends GuestlabError {
  override name = 'UnsafeDirectoryError';
  constructor(dir: string, problem: string, fix: string) {
    super(`${dir} ${problem}; guestlab keeps its ${fix}`, { code: 'ERR_UNSAFE_DIRECTORY' });
  }
}

export class LockTimeoutError extends GuestlabError {
  override name = 'LockTimeoutError';
  constructor(message: string) {
    super(message, { code: 'ERR_LOCK_TIMEOUT' });
  }
}

export class AbortedError extends GuestlabError {
  override name = 'AbortedError';
  constructor(what: string, options: { cause?: unknown } = {}) {
    super(`${what} was aborted`, { ...options, code: 'ERR_ABORTED' });
  }
}
