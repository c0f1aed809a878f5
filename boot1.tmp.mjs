import { startGuest } from 'guestlab';
const t0 = Date.now();
const vm = await startGuest({ image: process.argv[2] ?? 'debian-12', ...(process.argv[3] ? { cloudConfig: {} } : {}) });
try {
  console.log('ready in', Date.now() - t0, 'ms', JSON.stringify(vm.timings));
  console.log(await vm.succeed(['sh', '-c', 'id; hostname; cloud-init status; systemctl is-system-running; systemd-analyze; systemd-analyze critical-chain ssh.service guestlab-agent.service; systemd-analyze blame | head -12; ls /etc/ssh/ssh_host_*; cat /proc/cmdline']));
  const t1 = performance.now();
  for (let i = 0; i < 20; i++) await vm.exec(['true']);
  console.log('true x20 avg ms', (performance.now() - t1) / 20);
} finally {
  await vm.stop();
}
