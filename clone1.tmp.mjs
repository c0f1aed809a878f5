import { createTemplate } from 'guestlab';
const t = await createTemplate({ image: 'debian-12', cpus: 2, name: 'clone-probe' });
try {
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    const c = await t.clone();
    await c.succeed(['true']);
    console.log('first command', (performance.now() - t0).toFixed(0), JSON.stringify(c.timings.steps));
    await c.stop();
  }
} finally { await t.release(); }
