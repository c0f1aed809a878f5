// The public API of 'guestlab'. Nothing else is exported.
export { startGuest, type StartOptions } from './guest/start.ts';
export { createTemplate, GuestTemplate, templateKey, type TemplateTimings } from './guest/template.ts';
export { StartedGuest, UnitFailedError, DiskFullError, type ExecOptions, type ExecResult, type SshInfo, type BootTimings } from './guest/started-guest.ts';
export { WaitTimeoutError, type WaitOptions } from './guest/waits.ts';
export type { WriteFileOptions, ReadFileOptions } from './guest/files.ts';
export type { GuestEvidence } from './guest/evidence.ts';
export { InspectError, type FileInfo, type FileType, type PackageInfo, type UnitState, type UserInfo, type ListeningSocket } from './inspect/index.ts';
export { loadFixture, type GuestSpec } from './guest/spec.ts';
export { createNetwork, GuestNetwork, type NetworkOptions, type NetworkMember } from './network/network.ts';
export type { GuestNetworkInfo } from './guest/started-guest.ts';
export {
  Rehearsal,
  describeAttempt,
  formatDiff,
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
export {
  GuestlabError,
  GuestCommandError,
  BootTimeoutError,
  GuestDeadEndError,
  BudgetExceededError,
  BudgetDeadlockError,
  CloudInitError,
  HostKeyMismatchError,
  HostRequirementError,
  ConfigFileError,
  ImageBuildError,
  ImageCorruptError,
  ImageArchiveError,
  QemuError,
  SshError,
  GuestStoppedError,
  AbortedError,
  type GuestlabErrorCode,
  type DeadEnd,
  type DeadEndKind,
} from './errors.ts';
export { UnknownImageError, resolveImage, type CatalogEntry, type DownloadEntry, type Firmware } from './images/catalog.ts';
export { findOvmf, type OvmfFiles } from './host/firmware.ts';
export { UnknownFixtureError } from './guest/spec.ts';
export { ensureImage, type BuiltImage, type ImageManifest } from './images/builder.ts';
export { distroTraits, describeRelease, KNOWN_SUITES, type DistroTraits } from './images/traits.ts';
export { pullFile, DownloadError, type DownloadSource, type PulledFile, type PullOptions } from './images/download.ts';
export { imageCacheKey, exportImages, importImages, verifyCachedImages, removeImages, listCachedImages, type ImportedImage, type CachedImageInfo } from './images/archive.ts';
export { probeHost, type HostFacts } from './host/probe.ts';
export { quoteArg, quoteArgv } from './util/shell-quote.ts';
export { UnsafeDirectoryError } from './util/owned-dir.ts';
