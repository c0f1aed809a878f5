// What differs between the releases guestlab builds images of. Recipes name a suite and hold the
// package and file differences; the facts code and people need about a release live here, in one
// table, instead of `if (suite === ...)` across the code.

export interface DistroTraits {
  distro: 'Debian';
  /** VERSION_ID in /etc/os-release. */
  version: string;
  codename: string;
  /** The cloud-init version in the release's archive, when the table was written. */
  cloudInit: string;
  /**
   * The systemd unit of cloud-init's network stage, which injects SSH host keys: sshd is ordered
   * after it. cloud-init 24.3 renamed it from cloud-init.service.
   */
  cloudInitNetworkUnit: 'cloud-init.service' | 'cloud-init-network.service';
  /** cloud-init 24.3+ runs its stages in one process (one Python start-up instead of four). */
  cloudInitSingleProcess: boolean;
  /** Kernel series of linux-image-cloud-amd64. */
  kernel: string;
  python: string;
}

const DEBIAN: Record<string, DistroTraits> = {
  bullseye: { distro: 'Debian', version: '11', codename: 'bullseye', cloudInit: '20.4', cloudInitNetworkUnit: 'cloud-init.service', cloudInitSingleProcess: false, kernel: '5.10', python: '3.9' },
  bookworm: { distro: 'Debian', version: '12', codename: 'bookworm', cloudInit: '22.4', cloudInitNetworkUnit: 'cloud-init.service', cloudInitSingleProcess: false, kernel: '6.1', python: '3.11' },
  trixie: { distro: 'Debian', version: '13', codename: 'trixie', cloudInit: '25.1', cloudInitNetworkUnit: 'cloud-init-network.service', cloudInitSingleProcess: true, kernel: '6.12', python: '3.13' },
};

/** The suites guestlab knows the traits of. */
export const KNOWN_SUITES = Object.keys(DEBIAN);

/** Traits of a Debian suite (codename), or undefined for a suite the table does not know. */
export function distroTraits(suite: string): DistroTraits | undefined {
  return DEBIAN[suite];
}

/** "Debian 12 (bookworm)", or the suite itself when unknown. */
export function describeRelease(suite: string): string {
  const traits = distroTraits(suite);
  return traits ? `${traits.distro} ${traits.version} (${traits.codename})` : suite;
}
