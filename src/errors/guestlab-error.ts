// The root of every error guestlab throws on purpose: a stable `code` that callers branch on
// instead of parsing text, and a message that carries the evidence and the next step.

export type GuestlabErrorCode =
  | 'ERR_GUESTLAB'
  | 'ERR_HOST_REQUIREMENT'
  | 'ERR_ENVIRONMENT'
  | 'ERR_UNKNOWN_IMAGE'
  | 'ERR_UNKNOWN_FIXTURE'
  | 'ERR_CONFIG_FILE'
  | 'ERR_IMAGE_BUILD'
  | 'ERR_IMAGE_CORRUPT'
  | 'ERR_IMAGE_ARCHIVE'
  | 'ERR_TEMPLATE_ARCHIVE'
  | 'ERR_QEMU'
  | 'ERR_BOOT_TIMEOUT'
  | 'ERR_HOST_KEY_MISMATCH'
  | 'ERR_SSH'
  | 'ERR_CLOUD_INIT'
  | 'ERR_GUEST_COMMAND'
  | 'ERR_GUEST_STOPPED'
  | 'ERR_LOCK_TIMEOUT'
  | 'ERR_BUDGET'
  | 'ERR_BUDGET_DEADLOCK'
  | 'ERR_UNSAFE_DIRECTORY'
  | 'ERR_DISK_FULL'
  | 'ERR_WAIT_TIMEOUT'
  | 'ERR_UNIT_FAILED'
  | 'ERR_GUEST_DEAD_END'
  | 'ERR_ABORTED'
  | 'ERR_DOWNLOAD'
  | 'ERR_NOT_A_RECIPE';

export class GuestlabError extends Error {
  override name = 'GuestlabError';
  readonly code: GuestlabErrorCode;

  constructor(message: string, options: { code?: GuestlabErrorCode; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = options.code ?? 'ERR_GUESTLAB';
  }
}

/** The last `count` non-empty-trailing lines of a text, for error messages. */
export function tailLines(text: string, count: number): string {
  const lines = text.replace(/\s+$/, '').split('\n');
  return lines.slice(-count).join('\n');
}
