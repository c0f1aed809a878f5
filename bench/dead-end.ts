// npm run bench:dead-end [-- --image debian-12 --json]
// How long a boot that can never succeed takes to fail, through the public API: a guest whose
// cloudConfig writes an sshd option sshd refuses, and one that panics from bootcmd. Beside each,
// what the wait was before dead ends were detected: the boot timeout (600 s under TCG).
import { parseArgs } from 'node:util';
import { GuestDeadEndError, probeHost, startGuest, type GuestSpec } from 'guestlab';

const { values } = parseArgs({
  options: { image: { type: 'string', default: 'debian-12' }, json: { type: 'boolean', default: false } },
  strict: true,
});
process.env.GUESTLAB_QUIET ??= '1';

const scenarios: Record<string, Omit<GuestSpec, 'image'>> = {
  'sshd refuses its config': { name: 'broken-sshd', cloudConfig: { write_files: [{ path: '/etc/ssh/sshd_config.d/99-broken.conf', content: 'NoSuchOption yes\n' }] } },
  'kernel panic at bootcmd': { name: 'panics', cloudConfig: { bootcmd: ['echo c > /proc/sysrq-trigger'] } },
};
const accel = (await probeHost()).kvm.usable ? 'kvm' : 'tcg';
const timeoutMs = accel === 'kvm' ? 120_000 : 600_000;
const results = [];
for (const [label, spec] of Object.entries(scenarios)) {
  const t0 = performance.now();
  const error = await startGuest({ image: values.image, cpus: 1, ...spec }).then(
    async (guest) => {
      await guest.stop();
      return undefined;
    },
    (e: unknown) => e,
  );
  const failedAfterMs = Math.round(performance.now() - t0);
  const deadEnd = error instanceof GuestDeadEndError ? error : undefined;
  results.push({ label, failedAfterMs, code: (error as { code?: string } | undefined)?.code ?? 'booted', kind: deadEnd?.kind, unit: deadEnd?.unit, phase: deadEnd?.phase, waitBeforeMs: timeoutMs });
}
if (values.json) {
  console.log(JSON.stringify({ image: values.image, accel, results }, null, 2));
} else {
  console.log(`\nguestlab dead-end bench: ${values.image}, 1 vCPU, accel ${accel}`);
  console.log(`${'scenario'.padEnd(28)}${'fails after (s)'.padStart(16)}${'before (s)'.padStart(12)}  error`);
  for (const r of results) {
    console.log(`${r.label.padEnd(28)}${(r.failedAfterMs / 1000).toFixed(1).padStart(16)}${(r.waitBeforeMs / 1000).toFixed(0).padStart(12)}  ${r.code}${r.kind ? ` (${r.kind}${r.unit ? ` ${r.unit}` : ''}, phase ${r.phase})` : ''}`);
  }
  console.log('\n"before": the boot timeout the same boot waited out before the guest\'s dead ends were read from its console.');
}
