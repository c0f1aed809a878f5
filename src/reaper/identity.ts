// Moved to host/process-identity.ts, below both budget/ and reaper/ (which used to import each
// other through it). Kept until guest/ imports it from there.
export { currentIdentity, isAlive, parseStatStartTime, processCmdline, processStartTime, type ProcessIdentity } from '../host/process-identity.ts';
