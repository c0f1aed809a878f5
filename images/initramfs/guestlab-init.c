/*
 * guestlab-init: the whole initramfs of guestlab's direct-kernel-boot images, in place of Debian's
 * (initramfs-tools runs udev, a coldplug and a settle before it mounts the root: about 4 s of a TCG
 * boot). It loads the modules that the root file system needs, in the order /modules lists them
 * (the image build resolved their dependencies), finds root= (LABEL=name, UUID=uuid or a /dev
 * path), mounts it (ro or rw, rootfstype=, rootflags= as the kernel command line says), moves it
 * over / and execs init= (default /sbin/init). Any failure is one line on the console
 * ("guestlab-init: ...") and then the kernel's panic when init exits, which the host reads as a
 * dead end.
 *
 * Build: gcc -static -Os -Wall -Wextra -Werror -o init guestlab-init.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ROOT_WAIT_MS 30000
#define EXT4_MAGIC 0xEF53

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof line) n = sizeof line - 1;
  dprintf(2, "guestlab-init: %.*s\n", n, line);
  _exit(1); /* init exiting: the kernel panics, and the host sees a dead end */
}

static char cmdline[4096];

/* The value of NAME= on the kernel command line, or NULL. Values have no spaces here. */
static const char *param(const char *name, char *out, size_t cap) {
  size_t len = strlen(name);
  for (char *p = cmdline; *p;) {
    while (*p == ' ' || *p == '\n') p++;
    char *end = strchrnul(p, ' ');
    if ((size_t)(end - p) > len && !strncmp(p, name, len) && p[len] == '=') {
      size_t vlen = (size_t)(end - p) - len - 1;
      if (vlen >= cap) fail("%s= is too long", name);
      memcpy(out, p + len + 1, vlen);
      out[vlen] = 0;
      while (vlen && out[vlen - 1] == '\n') out[--vlen] = 0;
      return out;
    }
    p = end;
  }
  return NULL;
}

static int flag(const char *word) {
  size_t len = strlen(word);
  for (char *p = cmdline; *p;) {
    while (*p == ' ' || *p == '\n') p++;
    char *end = strchrnul(p, ' ');
    size_t wlen = (size_t)(end - p);
    while (wlen && p[wlen - 1] == '\n') wlen--;
    if (wlen == len && !strncmp(p, word, len)) return 1;
    p = end;
  }
  return 0;
}

static void load_modules(void) {
  FILE *list = fopen("/modules", "re");
  if (!list) return;
  char path[512];
  while (fgets(path, sizeof path, list)) {
    path[strcspn(path, "\n")] = 0;
    if (!*path) continue;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("%s: %s", path, strerror(errno));
    if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST) fail("loading %s: %s", path, strerror(errno));
    close(fd);
    unlink(path); /* its memory back: the initramfs stays allocated until nothing is left in it */
  }
  fclose(list);
  unlink("/modules");
}

/* An ext2/3/4 superblock's label and UUID ("xxxxxxxx-xxxx-..."). 0 when it is none. */
static int ext_ids(const char *dev, char label[17], char uuid[37]) {
  unsigned char sb[1024];
  int fd = open(dev, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = pread(fd, sb, sizeof sb, 1024);
  close(fd);
  if (n != (ssize_t)sizeof sb || (sb[0x38] | sb[0x39] << 8) != EXT4_MAGIC) return 0;
  memcpy(label, sb + 0x78, 16);
  label[16] = 0;
  const unsigned char *u = sb + 0x68;
  snprintf(uuid, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5], u[6],
           u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  return 1;
}

/* The device root= names, once it exists; NULL until then. */
static const char *find_root(const char *root, char *dev, size_t cap) {
  if (root[0] == '/') return access(root, F_OK) == 0 ? root : NULL;
  int by_label = !strncmp(root, "LABEL=", 6), by_uuid = !strncmp(root, "UUID=", 5);
  if (!by_label && !by_uuid) fail("root=%s: use LABEL=, UUID= or a /dev path", root);
  const char *want = root + (by_label ? 6 : 5);
  FILE *parts = fopen("/proc/partitions", "re");
  if (!parts) fail("/proc/partitions: %s", strerror(errno));
  char line[256], name[64];
  const char *found = NULL;
  while (!found && fgets(line, sizeof line, parts)) {
    unsigned major, minor;
    unsigned long long blocks;
    if (sscanf(line, " %u %u %llu %63s", &major, &minor, &blocks, name) != 4) continue;
    char label[17], uuid[37];
    snprintf(dev, cap, "/dev/%s", name);
    if (ext_ids(dev, label, uuid) && !strcmp(by_label ? label : uuid, want)) found = dev;
  }
  fclose(parts);
  return found;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(void) {
  if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0 && errno != EBUSY) fail("mounting /dev: %s", strerror(errno));
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) fail("mounting /proc: %s", strerror(errno));
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  ssize_t n = fd < 0 ? -1 : read(fd, cmdline, sizeof cmdline - 1);
  if (n < 0) fail("/proc/cmdline: %s", strerror(errno));
  close(fd);

  char root[256], fstype[32] = "ext4", flags[256] = "", init[256] = "/sbin/init", dev[300];
  if (!param("root", root, sizeof root)) fail("no root= on the kernel command line");
  param("rootfstype", fstype, sizeof fstype);
  param("rootflags", flags, sizeof flags);
  param("init", init, sizeof init);
  unsigned long mount_flags = flag("rw") ? 0 : MS_RDONLY;

  load_modules();
  const char *device = NULL;
  for (int64_t deadline = now_ms() + ROOT_WAIT_MS; !(device = find_root(root, dev, sizeof dev));) {
    if (now_ms() > deadline) fail("root=%s did not appear within %d s", root, ROOT_WAIT_MS / 1000);
    usleep(10000);
  }
  if (mount(device, "/root", fstype, mount_flags, flags) < 0) fail("mounting %s (%s) on /root: %s", device, fstype, strerror(errno));

  /* /dev goes along (systemd keeps a devtmpfs it finds); /proc is the new root's to mount. */
  if (mount("/dev", "/root/dev", NULL, MS_MOVE, NULL) < 0) umount2("/dev", MNT_DETACH);
  umount2("/proc", MNT_DETACH);
  unlink("/init");
  if (chdir("/root") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) fail("moving the root file system to /: %s", strerror(errno));
  char *argv[] = {init, NULL};
  execv(init, argv);
  fail("executing %s: %s", init, strerror(errno));
}
