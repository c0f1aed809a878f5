// A guest restored from a template joins its private networks after the restore: the template was
// saved without them (its key leaves networks out, so one template serves a spec on any network), and
// every guest has empty PCIe root ports for this (HOTPLUG_PORTS in qemu/argv.ts). Per network: a port
// and an address on the switch, a virtio NIC plugged into QEMU, then in the guest the interface
// with that MAC takes the spec's name (eth1, eth2, ...), its address, and its link. /etc/hosts
// follows once the guest is up (GuestNetwork.joined, as after a fresh boot).
import { GuestlabError } from '../../errors.ts';
import { HOTPLUG_PORTS } from '../../qemu/argv.ts';
import { runAsRootOnAgentOrSession } from '../commands.ts';
import { attachNetworks } from './boot.ts';
import { need, sinceStart, type LaunchStep } from './steps.ts';

/**
 * In the guest, as root: one (mac, name, address/prefix) triple of arguments per NIC. Waits for each
 * MAC's interface (hotplug takes a moment), then one `ip -batch` (a program started in a guest just
 * restored under TCG costs a few hundred ms): interfaces not named as the spec says first take a
 * temporary name (so that two that came up in each other's names can swap), then their own; then
 * addresses and links. The arguments are guestlab's own (MACs, ethN, IPv4/prefix): no blanks.
 */
const CONFIGURE_SCRIPT = [
  'set -e',
  "nl='",
  "' n=0 first= later= rest=",
  'find_dev() {',
  '  for f in /sys/class/net/*/address; do',
  '    read -r a < "$f" || continue',
  '    if [ "$a" = "$1" ]; then d=${f%/address}; echo "${d##*/}"; return; fi',
  '  done',
  '}',
  'while [ $# -ge 3 ]; do',
  '  mac=$1 name=$2 addr=$3; shift 3',
  '  tries=0',
  '  while dev=$(find_dev "$mac"); [ -z "$dev" ]; do',
  '    tries=$((tries + 1))',
  '    if [ $tries -gt 300 ]; then echo "no interface with MAC $mac appeared within 30 s of plugging it in (PCIe hotplug: see dmesg)" >&2; exit 4; fi',
  '    sleep 0.1',
  '  done',
  '  if [ "$dev" != "$name" ]; then',
  '    first="${first}link set dev $dev name glnic$n$nl" later="${later}link set dev glnic$n name $name$nl"',
  '  fi',
  '  rest="${rest}addr add $addr dev $name${nl}link set dev $name up$nl" n=$((n + 1))',
  'done',
  'printf %s "$first$later$rest" | ip -batch -',
].join('\n');

export const joinNetworksStep: LaunchStep = {
  name: 'join-networks',
  description: 'join the private networks the spec names: a port and an address on each, a NIC plugged into each, configured in the guest',
  hint: 'create the network first (createNetwork or networkFixture) and check its subnet has room; the guest’s dmesg shows the PCIe hotplug',
  async run(state) {
    const wanted = state.spec.networks;
    if (!wanted.length) return;
    if (wanted.length > HOTPLUG_PORTS) throw new GuestlabError(`Guest ${state.spec.name} joins ${wanted.length} networks; a restored guest has ${HOTPLUG_PORTS} hot-plug ports (boot it with { template: false })`);
    const monitor = need(state.resources.monitor, 'monitor');
    await attachNetworks(state);
    const triples: string[] = [];
    for (const [i, attachment] of state.attachments.entries()) {
      await monitor.attachNic({ id: `lan${i}`, mac: attachment.mac, socketPath: attachment.socketPath, slot: i });
      triples.push(attachment.mac, attachment.interfaceName, `${attachment.address}/${attachment.prefixLength}`);
    }
    const argv = ['sh', '-c', CONFIGURE_SCRIPT, 'sh', ...triples];
    const options = { timeoutMs: 60_000, ...(state.signal ? { signal: state.signal } : {}) };
    const result = await runAsRootOnAgentOrSession(state.resources, argv, options);
    if (result.exitCode !== 0) {
      throw new GuestlabError(`Guest ${state.spec.name} could not bring up its interfaces on ${wanted.map((n) => n.name).join(', ')} (exit code ${result.exitCode}): ${result.stderr.trim()}`);
    }
    state.timings.cloudInitDoneMs = sinceStart(state);
  },
};
