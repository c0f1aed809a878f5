// Guest inspection: what is installed, listening, on disk, in passwd and running, read through
// any executor (a StartedGuest) on Debian/Ubuntu, Fedora/Alma and Alpine alike.
export { InspectError } from '../errors.ts';
export type { ExecOutput, GuestExecutor } from './executor.ts';
export { detectTools, type GuestTools, type PackageManager, type ServiceManager, type SocketTool } from './detect.ts';
export { packageInfo, upstreamVersion, type PackageInfo } from './packages.ts';
export { listeningSockets, formatSocket, type ListeningSocket } from './sockets.ts';
export { fileInfo, fileContains, readFileText, type FileInfo, type FileType } from './files.ts';
export { userInfo, type UserInfo, type PasswdEntry } from './users.ts';
export { unitState, unitDiagnostics, describeUnitState, type UnitState } from './units.ts';
