// Where the guest agent lives in a guest and the systemd unit that starts it. guestlab's images get
// both from their recipe (images/debian-12.yaml: the binary from the build, the unit among its
// files); a downloaded image gets them from cloud-init (cloud-init/user-data.ts). The unit text is
// written twice, here and in the recipe (a recipe is YAML, hashed as it is read), and a unit test
// holds the two equal.

/** The agent binary in the guest. */
export const AGENT_PATH = '/usr/local/lib/guestlab/guestlab-agent';

/** The agent's unit in the guest. */
export const AGENT_UNIT_NAME = 'guestlab-agent.service';
export const AGENT_UNIT_PATH = `/etc/systemd/system/${AGENT_UNIT_NAME}`;

/** The unit's text, byte for byte the `content` of AGENT_UNIT_PATH in images/debian-12.yaml. */
export const AGENT_UNIT = `# guestlab's command channel: the guest agent serves commands and files on the virtio-serial
# port org.guestlab.agent.0 (root only in the guest; on the host, a socket only the guest's
# owner can reach). Started with the first units of the boot; it waits for the port itself,
# so a guest started without the port just has an idle agent. Commands run in its cgroup.
[Unit]
Description=guestlab guest agent (command channel)
DefaultDependencies=no
After=systemd-remount-fs.service
Before=sysinit.target
[Service]
ExecStart=${AGENT_PATH}
Restart=always
RestartSec=100ms
KillMode=mixed
[Install]
WantedBy=sysinit.target
`;
