// The public API of 'guestlab': what the README documents, what the benchmarks and outside suites
// import, the types of their parameters and results, and every error class. Nothing else.

// Guests, templates and clones.
export { startGuest, type StartOptions } from './guest/start.ts';
export { createTemplate, GuestTemplate, templateKey, type TemplateTimings } from './guest/template.ts';
export { StartedGuest, type ExecOptions, type ExecResult, type SshInfo, type BootTimings, type GuestNetworkInfo } from './guest/started-guest.ts';
export type { GuestSpec } from './guest/spec.ts';
export type { MountSpec } from './mounts/mount-spec.ts';
export type { GuestMount } from './guest/mounts.ts';
export type { WaitOptions } from './guest/waits.ts';
export type { WriteFileOptions, ReadFileOptions } from './guest/files.ts';
export type { GuestEvidence } from './guest/evidence.ts';
export type { FileInfo, FileType, PackageInfo, UnitState, UserInfo, ListeningSocket } from './inspect/index.ts';

// Private networks between guests.
export { createNetwork, GuestNetwork, type NetworkOptions, type NetworkMember } from './network/network.ts';

// Checkpoints and rehearsing a change.
export {
  Rehearsal,
  describeAttempt,
  DEFAULT_INVENTORY_PATHS,
  DEFAULT_INVENTORY_IGNORE,
  type Attempt,
  type AppliedChange,
  type ChangeStep,
  type CheckResult,
  type CheckpointInfo,
  type GuestChange,
  type InventoryDiff,
  type InventoryOptions,
  type RehearsalCheck,
  type RestoreTimings,
} from './guest/rehearsal.ts';

// Images and the host, as the benchmarks and CI scripts use them.
export { ensureImage, type BuiltImage, type ImageManifest } from './images/builder.ts';
export { exportImages, importImages, type ImportedImage } from './images/archive.ts';
export { distroTraits, type DistroTraits } from './images/traits.ts';
export { probeHost, type HostFacts } from './host/probe.ts';

// Every error class guestlab throws on purpose.
export {
  GuestlabError,
  HostRequirementError,
  EnvironmentError,
  UnsafeDirectoryError,
  LockTimeoutError,
  AbortedError,
  ConfigFileError,
  UnknownImageError,
  UnknownFixtureError,
  ImageBuildError,
  ImageCorruptError,
  ImageArchiveError,
  TemplateArchiveError,
  DownloadError,
  QemuError,
  BootTimeoutError,
  HostKeyMismatchError,
  SshError,
  CloudInitError,
  GuestDeadEndError,
  DiskFullError,
  GuestCommandError,
  GuestStoppedError,
  WaitTimeoutError,
  UnitFailedError,
  InspectError,
  BudgetExceededError,
  BudgetDeadlockError,
  type GuestlabErrorCode,
  type EnvironmentProblem,
  type DeadEnd,
  type DeadEndKind,
} from './errors.ts';
