import { createTemplate } from 'guestlab';
const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(p / 100 * s.length)]!.toFixed(2); };
const t = performance.now();
const tpl = await createTemplate({ image: 'debian-12', cpus: 2, memoryMiB: 1024, name: 'probe' });
console.log('template ms', (performance.now() - t).toFixed(0), JSON.stringify(tpl.timings));
for (let i = 0; i < 2; i++) {
  const t0 = performance.now();
  const c = await tpl.clone();
  const ready = performance.now() - t0;
  await c.succeed(['true']);
  console.log('clone', i, 'ready', ready.toFixed(0), 'first', (performance.now() - t0).toFixed(0), JSON.stringify(c.timings));
  if (i === 1) {
    for (const [label, argv, n] of [['builtin true', ['true'], 200], ['test -e', ['test', '-e', '/etc/passwd'], 100], ['/bin/true', ['/bin/true'], 100], ['sh -c :', ['sh', '-c', ':'], 50]] as const) {
      const xs: number[] = [];
      for (let k = 0; k < n; k++) { const s = performance.now(); await c.exec([...argv]); xs.push(performance.now() - s); }
      console.log(label, 'p50', pct(xs, 50), 'p95', pct(xs, 95));
    }
    const s = performance.now(); await c.exec(['sudo', '-n', 'true']); console.log('sudo true', (performance.now() - s).toFixed(1));
    const s2 = performance.now(); await c.exec(['perl', '-e', '1']); console.log('perl -e 1', (performance.now() - s2).toFixed(1));
    const s3 = performance.now(); await c.exec(['date', '-s', '@1']); console.log('date', (performance.now() - s3).toFixed(1));
  }
  const s = performance.now(); await c.stop(); console.log('stop', (performance.now() - s).toFixed(0));
}
await tpl.release();
