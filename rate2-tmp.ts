import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import ssh2 from 'ssh2';
const N = Number(process.argv[2]);
let bad = 0, pubShort = 0;
for (let i = 0; i < N; i++) {
  const o = ssh2.utils.generateKeyPairSync('ed25519', { comment: 'x' });
  if (Buffer.from(o.public.split(' ')[1]!, 'base64').readUInt32BE(15) !== 32) pubShort++;
  fs.writeFileSync('/tmp/exp/k2', o.private, { mode: 0o600 });
  try { execFileSync('ssh-keygen', ['-y', '-f', '/tmp/exp/k2'], { stdio: 'pipe' }); } catch { bad++; }
}
console.log(JSON.stringify({ keys: N, opensshRefused: bad, publicKeyShort: pubShort }));
