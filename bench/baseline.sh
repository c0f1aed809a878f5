#!/usr/bin/env bash
# The plain shell baseline: what a person would write by hand. Same image, same QEMU flags for
# CPU and memory, a NoCloud seed made with genisoimage, and an ssh polling loop. Prints one JSON
# object with the same figures the guestlab bench reports.
#   bench/baseline.sh IMAGE_DIR CPUS MEMORY_MIB ACCEL EXEC_COUNT
set -euo pipefail
image_dir=$1 cpus=$2 mem=$3 accel=$4 count=$5
now_ms() { date +%s%3N; }
t0=$(now_ms)
work=$(mktemp -d /tmp/guestlab-baseline.XXXXXX)
qemu_pid=
cleanup() { [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

ssh-keygen -q -t ed25519 -N '' -f "$work/id" -C baseline
qemu-img create -q -f qcow2 -F qcow2 -b "$image_dir/disk.qcow2" "$work/disk.qcow2"
cat > "$work/user-data" <<EOT
#cloud-config
users:
  - name: tester
    sudo: ALL=(ALL) NOPASSWD:ALL
    shell: /bin/bash
    ssh_authorized_keys: [$(cat "$work/id.pub")]
EOT
printf 'instance-id: baseline-%s\nlocal-hostname: baseline\n' "$$" > "$work/meta-data"
genisoimage -quiet -output "$work/seed.iso" -volid cidata -joliet -rock "$work/user-data" "$work/meta-data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if [ "$accel" = kvm ]; then accel_args=(-accel kvm -cpu host); else accel_args=(-accel tcg,thread=multi -cpu max); fi
t_image=$(now_ms)
qemu-system-x86_64 -nodefaults -display none -machine q35 "${accel_args[@]}" -smp "$cpus" -m "$mem" \
  -drive "if=virtio,file=$work/disk.qcow2,format=qcow2" -drive "if=virtio,file=$work/seed.iso,format=raw,readonly=on" \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
  -device virtio-rng-pci -serial "file:$work/serial.log" \
  -kernel "$image_dir/vmlinuz" -initrd "$image_dir/initrd.img" -append "root=LABEL=root ro console=ttyS0 net.ifnames=0" &
qemu_pid=$!
t_qemu=$(now_ms)
ssh_opts=(-i "$work/id" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR)
until ssh "${ssh_opts[@]}" tester@127.0.0.1 true 2>/dev/null; do
  kill -0 "$qemu_pid" 2>/dev/null || { echo '{"error":"qemu exited"}'; exit 1; }
  [ $(( $(now_ms) - t0 )) -gt 600000 ] && { echo '{"error":"timeout"}'; exit 1; }
  sleep 0.5
done
t_ssh=$(now_ms)
ssh "${ssh_opts[@]}" tester@127.0.0.1 cloud-init status --wait >/dev/null
t_ready=$(now_ms)
samples=()
for _ in $(seq "$count"); do
  s=$(date +%s%N); ssh "${ssh_opts[@]}" tester@127.0.0.1 true; e=$(date +%s%N)
  samples+=($(( (e - s) / 1000 )))
done
t_stop0=$(now_ms)
kill -9 "$qemu_pid"; wait "$qemu_pid" 2>/dev/null || true; qemu_pid=
t_stop=$(now_ms)
printf '{"imageReadyMs":%d,"qemuStartedMs":%d,"sshReadyMs":%d,"cloudInitDoneMs":%d,"teardownMs":%d,"execUs":[%s]}\n' \
  $((t_image - t0)) $((t_qemu - t0)) $((t_ssh - t0)) $((t_ready - t0)) $((t_stop - t_stop0)) "$(IFS=,; echo "${samples[*]}")"
