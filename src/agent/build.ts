// Compiles the guest agent (images/agent/guestlab-agent.c) into a static binary named by the
// digest of its source and flags (util/static-c.ts). Static: one binary runs on Debian 11, 12 and 13 guests.
import path from 'node:path';
import { buildStatic, sourceDigest, sourceDigestSync, type StaticProgram } from '../host/static-c.ts';

/** The agent's C source: images/ sits next to src/ and dist/ in the package. */
export const AGENT_SOURCE = path.resolve(import.meta.dirname, '../../images/agent/guestlab-agent.c');
export const AGENT_CFLAGS: readonly string[] = ['-static', '-O2', '-Wall', '-Wextra', '-Werror'];

const AGENT: StaticProgram = { name: 'guestlab-agent', what: 'the guest agent', source: AGENT_SOURCE, cflags: AGENT_CFLAGS };

/** 16 hex digits of sha256(source + flags): the name of the binary that source builds. */
export function agentSourceDigest(): Promise<string> {
  return sourceDigest(AGENT);
}

/** agentSourceDigest() for code that must stay synchronous (an image recipe's hash). */
export function agentSourceDigestSync(): string {
  return sourceDigestSync(AGENT);
}

/** Compiles the agent into `outDir/guestlab-agent-<digest>` unless it is there already; returns its path. */
export function buildAgent(outDir: string): Promise<string> {
  return buildStatic(AGENT, outDir);
}
