// Two guests on a private network: a tiny key-value server on "db" and a client on "app" that
// reaches it by name. The network has no route to the outside; only its members are on it.
// Run it: npx vitest run test/examples/client-server.test.ts
import type { GuestNetwork, StartedGuest } from 'guestlab';
import { guestFixture, networkFixture } from 'guestlab/vitest';
import { expect, test as base } from 'vitest';

const SERVER = `import socketserver
store = {}
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            cmd, _, rest = line.decode().strip().partition(' ')
            if cmd == 'SET':
                key, _, value = rest.partition(' ')
                store[key] = value
                self.wfile.write(b'OK\\n')
            elif cmd == 'GET':
                self.wfile.write((store.get(rest, '') + '\\n').encode())
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(('0.0.0.0', 7000), Handler).serve_forever()
`;

const CLIENT = `import socket, sys
with socket.create_connection((sys.argv[1], 7000), timeout=5) as s:
    f = s.makefile('rw')
    for command in sys.argv[2:]:
        f.write(command + '\\n'); f.flush()
        print(f.readline().strip())
`;

const test = base.extend<{ lan: GuestNetwork; db: StartedGuest; app: StartedGuest }>({
  lan: networkFixture('lan'),
  db: guestFixture({
    image: 'debian-12',
    name: 'db',
    networks: ['lan'],
    cloudConfig: {
      write_files: [
        { path: '/usr/local/bin/kv-server', permissions: '0755', content: `#!/usr/bin/python3\n${SERVER}` },
        { path: '/etc/systemd/system/kv.service', content: '[Service]\nExecStart=/usr/local/bin/kv-server\n[Install]\nWantedBy=multi-user.target\n' },
      ],
      runcmd: [['systemctl', 'enable', '--now', 'kv.service']],
    },
  }),
  app: guestFixture({
    image: 'debian-12',
    name: 'app',
    networks: ['lan'],
    cloudConfig: { write_files: [{ path: '/usr/local/bin/kv', permissions: '0755', content: `#!/usr/bin/python3\n${CLIENT}` }] },
  }),
});

test('the app stores and reads a value on the db server over the private network', async ({ lan, db, app }) => {
  await db.waitForUnit('kv.service');
  await db.waitForPort(7000);
  expect(await app.succeed(['getent', 'hosts', 'db'])).toMatch(new RegExp(`^${lan.addressOf(db).replaceAll('.', '\\.')}\\s`));
  expect((await app.succeed(['kv', 'db', 'SET color blue', 'GET color'])).trim()).toBe('OK\nblue');
});
