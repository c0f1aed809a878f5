// Every error class guestlab throws on purpose, in one place (src/errors/), each a GuestlabError
// with a stable `code`. A leaf: nothing here imports the rest of guestlab.
export { GuestlabError, tailLines, type GuestlabErrorCode } from './errors/guestlab-error.ts';
export { HostRequirementError, EnvironmentError, UnsafeDirectoryError, LockTimeoutError, AbortedError, type EnvironmentProblem } from './errors/host.ts';
export { ConfigFileError, UnknownImageError, UnknownFixtureError, ImageBuildError, ImageCorruptError, ImageArchiveError, TemplateArchiveError, DownloadError } from './errors/images.ts';
export { QemuError, BootTimeoutError, HostKeyMismatchError, SshError, CloudInitError, GuestDeadEndError, DiskFullError, type DeadEnd, type DeadEndKind } from './errors/boot.ts';
export { GuestCommandError, GuestStoppedError, WaitTimeoutError, UnitFailedError, InspectError, describeUnitState, type UnitState } from './errors/guest.ts';
export { BudgetExceededError, BudgetDeadlockError } from './errors/budget.ts';
