// Worked example: a guest installs and configures nginx through cloud-init, from packages baked into
// the debian-12-web image (images/debian-12-web.yaml: `offlinePackages: [nginx-light]`), so no
// network is needed. The checks use guestlab's matchers; the host then fetches the pages through
// ports forwarded at run time to 127.0.0.1.
import type { StartedGuest } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { describe, expect, test as base } from 'vitest';

const test = base.extend<{ web: StartedGuest }>({
  web: guestFixture({
    image: 'debian-12-web',
    name: 'web',
    cloudConfig: {
      // apt sees only the image's offline repository (/etc/apt/sources.list.d/guestlab-offline.list);
      // the default sources.list would send `apt-get update` to the internet.
      apt: {
        preserve_sources_list: false,
        sources_list: "# guestlab: packages come from the image's offline repository only\n",
      },
      packages: ['nginx-light'],
      write_files: [
        { path: '/var/www/html/index.html', content: '<h1>Hello from a guestlab guest</h1>\n' },
        {
          // A second server block with a health endpoint, in conf.d so it does not touch the
          // package's own conffiles.
          path: '/etc/nginx/conf.d/health.conf',
          content: 'server {\n  listen 8081;\n  location = /health { default_type text/plain; return 200 "healthy\\n"; }\n}\n',
        },
      ],
    },
  }),
});

describe('nginx installed and configured by cloud-init', () => {
  test('the package is installed from the offline repository, and the service runs', async ({ web }) => {
    await expect(web).toHavePackage('nginx-light', { version: /^1\.22\./ });
    await expect(web).toHaveActiveUnit('nginx');
    await expect(web).toListenOn(80);
    await expect(web).toListenOn(8081);
    await expect(web).toHaveFile('/etc/nginx/conf.d/health.conf', { owner: 'root', mode: '0644', contains: 'location = /health' });
    expect(await web.exec(['sudo', 'nginx', '-t'])).toSucceed();
  });

  test('the host fetches the page and the health endpoint through forwarded ports', async ({ web }) => {
    const http = await web.forward(80);
    const page = await fetch(`http://127.0.0.1:${http}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toBe('<h1>Hello from a guestlab guest</h1>\n');

    const health = await fetch(`http://127.0.0.1:${await web.forward(8081)}/health`);
    expect(await health.text()).toBe('healthy\n');
  });

  test('a configuration change is applied, checked and served', async ({ web }) => {
    await web.writeFile('/var/www/html/status.txt', 'maintenance\n', { sudo: true, mode: '0644' });
    await web.succeed(['systemctl', 'reload', 'nginx'], { sudo: true });
    await web.waitForUnit('nginx');
    const response = await fetch(`http://127.0.0.1:${await web.forward(80)}/status.txt`);
    expect(await response.text()).toBe('maintenance\n');
  });
});
