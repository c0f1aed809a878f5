// guestlab's command channel to a guest agent (images/agent/guestlab-agent.c) over a virtio-serial
// port: the client, the request and result types, and the build of the agent binary.
export { AgentClient, type AgentConnectOptions, type AgentHello } from './client.ts';
export type { AgentExecRequest, AgentExecResult, AgentFileRequest, AgentReadFileRequest, AgentWriteFileRequest } from './request.ts';
export { AGENT_CFLAGS, AGENT_SOURCE, agentSourceDigest, buildAgent } from './build.ts';
export { PROTOCOL_VERSION } from './protocol.ts';
