// The SSH connection to a guest: ssh2's Client, authenticated with guestlab's key, the guest's
// host key pinned. ssh/ is the only folder that imports ssh2.
import type net from 'node:net';
import { Client } from 'ssh2';
import { HostKeyMismatchError } from '../errors.ts';
import { fingerprint, publicKeyBlob } from './keys.ts';

export interface SshEndpoint {
  host: string;
  port: number;
  user: string;
  privateKey: string;
  /** The pinned host key, as an OpenSSH public key line. */
  hostKey: string;
}

export interface ConnectOptions {
  /** A socket already connected to the endpoint (e.g. by the banner wait); default: a new connection. */
  sock?: net.Socket;
  readyTimeoutMs?: number;
}

/** An authenticated connection, and why it stopped being usable once it has. */
export class SshConnection {
  readonly client: Client;
  #lostReason: string | undefined;

  private constructor(client: Client) {
    this.client = client;
    client.on('close', () => {
      this.#lostReason ??= 'the SSH connection closed';
    });
    client.on('error', (error) => {
      this.#lostReason ??= `the SSH connection failed: ${error.message}`;
    });
  }

  /** Why the connection failed or closed, or undefined while it is up. */
  get lostReason(): string | undefined {
    return this.#lostReason;
  }

  /** Authenticates; rejects with HostKeyMismatchError when the server's key is not the pinned one. */
  static open(endpoint: SshEndpoint, options: ConnectOptions = {}): Promise<SshConnection> {
    const expectedBlob = publicKeyBlob(endpoint.hostKey);
    const where = `${endpoint.host}:${endpoint.port}`;
    return new Promise((resolve, reject) => {
      const client = new Client();
      let mismatch: HostKeyMismatchError | undefined;
      const fail = (error: Error) => {
        client.removeAllListeners('ready');
        client.end();
        reject(mismatch ?? error);
      };
      client.once('ready', () => {
        client.removeListener('error', fail);
        client.setNoDelay(true);
        // Constructed here, not after the promise settles: its 'error' listener must be in place
        // before ssh2 can emit another event.
        resolve(new SshConnection(client));
      });
      client.once('error', fail);
      client.connect({
        sock: options.sock,
        host: endpoint.host,
        port: endpoint.port,
        username: endpoint.user,
        privateKey: endpoint.privateKey,
        readyTimeout: options.readyTimeoutMs ?? 20_000,
        keepaliveInterval: 15_000,
        keepaliveCountMax: 8,
        hostVerifier: (key: Buffer) => {
          if (key.equals(expectedBlob)) return true;
          mismatch = new HostKeyMismatchError(where, fingerprint(expectedBlob), fingerprint(key));
          return false;
        },
      });
    });
  }
}
