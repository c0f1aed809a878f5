/*
 * guestlab agent protocol, version 2
 *
 * guestlab (src/agent/) and the guest agent (images/agent/guestlab-agent.c) exchange frames over
 * one byte stream: a virtio-serial port in the guest (/dev/virtio-ports/org.guestlab.agent.0),
 * a unix socket on the host.
 *
 * A frame is a 12-byte header and a payload. Integers are little-endian.
 *   u32 length    payload bytes, at most 1048576 (1 MiB)
 *   u8  type
 *   u8  flags     0
 *   u16 reserved  0
 *   u32 id        the command (chosen by the host, never 0) or the ping; 0 on HELLO, READY and
 *                 connection-level ERROR frames
 * MAGIC is the 8 bytes 89 47 4c 41 47 45 4e 54 ("\x89GLAGENT").
 *
 * Host to agent
 *   0x01 HELLO      MAGIC, nonce (16 bytes): 24 bytes. The first frame on a connection. Ends the
 *                   previous session: the agent kills every command it runs and forgets them,
 *                   unless the nonce is the current session's (then it only answers again).
 *   0x02 EXEC       u32 flags (bit 0: stdin follows), u32 timeoutMs (0: none), u32 argc,
 *                   u32 envc, then NUL-terminated strings: user ("": root), cwd ("": the user's
 *                   home), argc argv strings, envc "NAME=value" strings. Nothing after them.
 *   0x03 STDIN      bytes for the command's stdin. The bytes sent and not yet acknowledged
 *                   (STDIN_ACK) stay within the window that the agent's HELLO announced.
 *   0x04 STDIN_EOF  empty. Closes the command's stdin once the bytes before it are written.
 *   0x05 KILL       u32 signal number, sent to the command's process group.
 *   0x06 PING       up to 64 bytes, echoed by a PONG with the same id.
 *   0x07 RENEW      u64 the host's wall-clock time (ns since the epoch), then 16 to 256 bytes of
 *                   seed: the agent sets the guest's clock, writes the seed into /dev/urandom and
 *                   forces a reseed (RNDRESEEDCRNG), without a fork; EXIT (0) or ERROR answers.
 *                   A restored clone's first request.
 *   0x08 WRITE_FILE u32 mode, then NUL-terminated strings: user ("": root), path (absolute), owner
 *                   ("": unchanged; "user", "user:group", "user:" or ":group", by name or number;
 *                   root only). With the user's file-system uid, gid and groups, the agent makes
 *                   the directories above path (0755), creates a new file beside it
 *                   (path.guestlab-XXXXXX, then owner and mode), writes the STDIN frames that
 *                   follow into it (within the window, acknowledged as for a command) and at
 *                   STDIN_EOF renames it over path. EXIT 0 once renamed. When a step fails: a
 *                   message on STDERR, the new file removed, and EXIT with the step's errno as the
 *                   exit code (ENOENT 2, EACCES 13, EISDIR 21, ENOSPC 28). KILL abandons it.
 *   0x09 READ_FILE  NUL-terminated strings: user ("": root), path (absolute). Opened with the
 *                   user's file-system credentials; its bytes come as STDOUT frames, then EXIT 0,
 *                   or a message on STDERR and EXIT with the errno (a directory: EISDIR, 21).
 *                   KILL abandons it.
 *                   Both are commands without a process: same ids, frames and limits, no timeout.
 *
 * Agent to host
 *   0x81 HELLO      MAGIC, the host's nonce, u32 protocol version, u32 agent pid, u32 stdin
 *                   window (bytes), u32 max payload, then the boot id (36 ASCII bytes).
 *   0x82 STDOUT     bytes the command wrote to stdout.
 *   0x83 STDERR     bytes the command wrote to stderr.
 *   0x84 STDIN_ACK  u32 n: n more stdin bytes left the agent (written to the command's pipe,
 *                   or dropped because the command closed its stdin).
 *   0x85 EXIT       i32 exit code (-1: killed by a signal), u32 flags (bit 0: timed out), then
 *                   the signal's name without "SIG" ("TERM"; empty after an exit). The last
 *                   frame of a command: sent once it exited and its stdout and stderr reached
 *                   end of file, or, once the agent sent its group SIGKILL, once it exited.
 *   0x86 PONG       the PING's payload.
 *   0x87 ERROR      UTF-8 message. With a command's id: the EXEC was refused (no such user, bad
 *                   request, too many commands) and nothing ran; the last frame of that id.
 *                   With id 0: the agent found a protocol error, killed every command, and
 *                   discards its input until a HELLO.
 *   0x88 READY      MAGIC, u32 protocol version, u32 agent pid, then the boot id. The agent
 *                   started or the host end (re)connected: no session, it waits for a HELLO.
 *
 * Resynchronisation: until a HELLO, the agent scans its input for MAGIC preceded by a HELLO
 * header, so stale bytes (a previous host's, a garbled frame's) are skipped. The host likewise
 * skips everything before the HELLO reply that carries its nonce.
 *
 * Commands: the child runs setsid(), takes the user's uid, gid and supplementary groups (from
 * /etc/passwd and /etc/group), umask 022, enters cwd, gets a clean environment (PATH, HOME,
 * USER, LOGNAME, SHELL, LANG and LC_* from /etc/default/locale, then the request's env) and
 * execs argv[0] with execvp semantics: exit 127 when it is not found, 126 when it cannot be
 * executed, 1 when cwd cannot be entered, each with a message on stderr. At timeoutMs the
 * process group gets SIGTERM, SIGKILL 2 s later, and EXIT says timed out. argv ["true"], [":"]
 * (exit 0) and ["false"] (exit 1) with no env, cwd or stdin, for any user, are answered without a
 * fork. When the host end closes, the agent kills every command and waits for a new host.
 */

/*
 * guestlab-agent: runs commands for guestlab inside a guest, over the virtio-serial port
 * above. One thread, one poll() loop; output goes from the children's pipes straight into one
 * output buffer (no per-frame allocation); writes to the port never block, and children's
 * output is left in their pipes while the host is slow. Static binary: no NSS, the account
 * databases are parsed here. Logs go to stderr (the journal) and never carry argv or env.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o guestlab-agent guestlab-agent.c
 * Usage: guestlab-agent [--port PATH] [--fd N] [--exit-on-eof]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL_VERSION 2
#define HDR 12
#define MAX_PAYLOAD (1u << 20)
#define IN_CAP (MAX_PAYLOAD + HDR + 256u * 1024)
#define OUT_CAP (4u << 20)
#define OUT_CHUNK (256u * 1024)          /* most bytes read from a child's pipe at once */
#define OUT_HIGH (1u << 20)              /* above this many unsent bytes, children wait */
#define OUT_MOVE (256u * 1024)           /* at most this many unsent bytes are moved down */
#define IN_STOP (OUT_HIGH + 2 * OUT_CHUNK) /* above this, requests wait in the input buffer */
#define STDIN_WINDOW (1u << 20)
#define PIPE_BYTES (1 << 20)
#define MAX_COMMANDS 1024
#define MAX_PING 64
#define LOCALE_MAX 64
#define KILL_AFTER_MS 2000
#define RECONNECT_MS 25
#define DEFAULT_PORT "/dev/virtio-ports/org.guestlab.agent.0"
#define ROOT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define USER_PATH "PATH=/usr/local/bin:/usr/bin:/bin:/usr/games"

enum {
  T_HELLO = 0x01, T_EXEC = 0x02, T_STDIN = 0x03, T_STDIN_EOF = 0x04, T_KILL = 0x05, T_PING = 0x06, T_RENEW = 0x07,
  T_WRITE_FILE = 0x08, T_READ_FILE = 0x09,
  R_HELLO = 0x81, R_STDOUT = 0x82, R_STDERR = 0x83, R_STDIN_ACK = 0x84, R_EXIT = 0x85,
  R_PONG = 0x86, R_ERROR = 0x87, R_READY = 0x88,
};

static const unsigned char MAGIC[8] = {0x89, 'G', 'L', 'A', 'G', 'E', 'N', 'T'};

/* ---- small helpers ---- */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  char line[512];
  int n = snprintf(line, sizeof line, "guestlab-agent: ");
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  if (m < 0) m = 0;
  size_t len = (size_t)n + ((size_t)m < sizeof line - n - 1 ? (size_t)m : sizeof line - n - 2);
  line[len++] = '\n';
  ssize_t ignored = write(2, line, len);
  (void)ignored;
}

static void die(const char *what) {
  say("%s: %s; exiting", what, strerror(errno));
  exit(1);
}

static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put32(unsigned char *p, uint32_t v) {
  p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; p[2] = (v >> 16) & 0xff; p[3] = (v >> 24) & 0xff;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) die("out of memory");
  return p;
}

static void set_flags(int fd, int add, int remove) {
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, (flags | add) & ~remove);
}

static const char *signal_name(int sig) {
  static const struct { int sig; const char *name; } names[] = {
    {SIGHUP, "HUP"}, {SIGINT, "INT"}, {SIGQUIT, "QUIT"}, {SIGILL, "ILL"}, {SIGTRAP, "TRAP"},
    {SIGABRT, "ABRT"}, {SIGBUS, "BUS"}, {SIGFPE, "FPE"}, {SIGKILL, "KILL"}, {SIGUSR1, "USR1"},
    {SIGSEGV, "SEGV"}, {SIGUSR2, "USR2"}, {SIGPIPE, "PIPE"}, {SIGALRM, "ALRM"}, {SIGTERM, "TERM"},
    {SIGCHLD, "CHLD"}, {SIGCONT, "CONT"}, {SIGSTOP, "STOP"}, {SIGTSTP, "TSTP"}, {SIGTTIN, "TTIN"},
    {SIGTTOU, "TTOU"}, {SIGURG, "URG"}, {SIGXCPU, "XCPU"}, {SIGXFSZ, "XFSZ"}, {SIGVTALRM, "VTALRM"},
    {SIGPROF, "PROF"}, {SIGWINCH, "WINCH"}, {SIGIO, "IO"}, {SIGPWR, "PWR"}, {SIGSYS, "SYS"},
  };
  static char other[16];
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) if (names[i].sig == sig) return names[i].name;
  snprintf(other, sizeof other, "%d", sig);
  return other;
}

/* ---- files read for each command, re-read only when they change ---- */

struct cached_file {
  const char *path;
  char *data;           /* NUL-terminated; "" when the file is missing */
  size_t len;
  int present;
  struct stat st;
};

static struct cached_file passwd_file = {"/etc/passwd", NULL, 0, 0, {0}};
static struct cached_file group_file = {"/etc/group", NULL, 0, 0, {0}};
static struct cached_file locale_file = {"/etc/default/locale", NULL, 0, 0, {0}};

/* Returns 1 when the contents changed. */
static int refresh(struct cached_file *f) {
  struct stat st;
  if (stat(f->path, &st) < 0) {
    int changed = f->present || !f->data;
    f->present = 0;
    if (!f->data) f->data = xmalloc(1);
    f->data[0] = 0;
    f->len = 0;
    return changed;
  }
  if (f->present && st.st_ino == f->st.st_ino && st.st_dev == f->st.st_dev && st.st_size == f->st.st_size &&
      st.st_mtim.tv_sec == f->st.st_mtim.tv_sec && st.st_mtim.tv_nsec == f->st.st_mtim.tv_nsec &&
      st.st_ctim.tv_sec == f->st.st_ctim.tv_sec && st.st_ctim.tv_nsec == f->st.st_ctim.tv_nsec) return 0;
  int fd = open(f->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &st) < 0 || st.st_size > (64 << 20)) {
    if (fd >= 0) close(fd);
    f->present = 0;
    return refresh(f);
  }
  size_t cap = (size_t)st.st_size + 1, len = 0;
  char *data = xmalloc(cap);
  for (;;) {
    if (len + 1 == cap) {
      char *bigger = realloc(data, cap *= 2);
      if (!bigger) die("out of memory");
      data = bigger;
    }
    ssize_t n = read(fd, data + len, cap - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
  }
  close(fd);
  data[len] = 0;
  free(f->data);
  f->data = data;
  f->len = len;
  f->present = 1;
  f->st = st;
  return 1;
}

/* The next line of a cached file: [*at, end of line), *at moves past it. 0 at the end. */
static int next_line(const char **at, const char **start, size_t *len) {
  if (!**at) return 0;
  const char *nl = strchrnul(*at, '\n');
  *start = *at;
  *len = (size_t)(nl - *at);
  *at = *nl ? nl + 1 : nl;
  return 1;
}

/* Splits a line at ':' into at most max fields (not NUL-terminated: starts and lengths). */
static int split_fields(const char *line, size_t len, const char **field, size_t *flen, int max) {
  int n = 0;
  const char *start = line, *end = line + len;
  for (const char *p = line; n < max; p++) {
    if (p == end || *p == ':') {
      field[n] = start;
      flen[n++] = (size_t)(p - start);
      if (p == end) break;
      start = p + 1;
    }
  }
  return n;
}

static int parse_id(const char *s, size_t len, uint32_t *out) {
  if (len == 0 || len > 10) return 0;
  uint64_t v = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v > UINT32_MAX) return 0;
  *out = (uint32_t)v;
  return 1;
}

/* ---- accounts ---- */

struct account {
  uid_t uid;
  gid_t gid;
  char name[256];
  char home[PATH_MAX];
  char shell[PATH_MAX];
};

static gid_t *groups;
static size_t ngroups, groups_cap;

static int lookup_account(const char *name, struct account *a) {
  size_t name_len = strlen(name);
  if (name_len >= sizeof a->name) return 0;
  refresh(&passwd_file);
  const char *at = passwd_file.data, *line;
  size_t len;
  while (next_line(&at, &line, &len)) {
    const char *f[7];
    size_t fl[7];
    if (split_fields(line, len, f, fl, 7) != 7 || fl[0] != name_len || memcmp(f[0], name, name_len)) continue;
    uint32_t uid, gid;
    if (!parse_id(f[2], fl[2], &uid) || !parse_id(f[3], fl[3], &gid)) continue;
    if (fl[5] >= sizeof a->home || fl[6] >= sizeof a->shell) continue;
    a->uid = uid;
    a->gid = gid;
    memcpy(a->name, name, name_len + 1);
    memcpy(a->home, f[5], fl[5]);
    a->home[fl[5]] = 0;
    if (!fl[5]) strcpy(a->home, "/");
    memcpy(a->shell, f[6], fl[6]);
    a->shell[fl[6]] = 0;
    if (!fl[6]) strcpy(a->shell, "/bin/sh");
    return 1;
  }
  return 0;
}

static void add_group(gid_t gid) {
  for (size_t i = 0; i < ngroups; i++) if (groups[i] == gid) return;
  if (ngroups == groups_cap) {
    groups_cap = groups_cap ? groups_cap * 2 : 64;
    gid_t *bigger = realloc(groups, groups_cap * sizeof *groups);
    if (!bigger) die("out of memory");
    groups = bigger;
  }
  groups[ngroups++] = gid;
}

/* The primary group and every group of /etc/group that lists the user, as initgroups() does. */
static void collect_groups(const struct account *a) {
  size_t name_len = strlen(a->name);
  ngroups = 0;
  add_group(a->gid);
  refresh(&group_file);
  const char *at = group_file.data, *line;
  size_t len;
  while (next_line(&at, &line, &len)) {
    const char *f[4];
    size_t fl[4];
    uint32_t gid;
    if (split_fields(line, len, f, fl, 4) != 4 || !parse_id(f[2], fl[2], &gid)) continue;
    for (const char *m = f[3], *end = f[3] + fl[3]; m < end;) {
      const char *comma = memchr(m, ',', (size_t)(end - m));
      size_t mlen = (size_t)((comma ? comma : end) - m);
      if (mlen == name_len && !memcmp(m, a->name, name_len)) {
        add_group(gid);
        break;
      }
      m += mlen + 1;
    }
  }
}

/* LANG and LC_* of /etc/default/locale as "NAME=value" strings, rebuilt when the file changes. */
static char *locale_store;
static char *locale_env[LOCALE_MAX];
static size_t nlocale;

static void load_locale(void) {
  if (!refresh(&locale_file) && locale_store) return;
  free(locale_store);
  locale_store = xmalloc(locale_file.len + 1);
  nlocale = 0;
  char *out = locale_store;
  const char *at = locale_file.data, *line;
  size_t len;
  while (next_line(&at, &line, &len) && nlocale < sizeof locale_env / sizeof locale_env[0]) {
    while (len && (*line == ' ' || *line == '\t')) line++, len--;
    if (len > 7 && !memcmp(line, "export ", 7)) line += 7, len -= 7;
    const char *eq = memchr(line, '=', len);
    if (!eq) continue;
    size_t nlen = (size_t)(eq - line);
    int ok = (nlen == 4 && !memcmp(line, "LANG", 4)) || (nlen > 3 && !memcmp(line, "LC_", 3));
    for (size_t i = 0; ok && i < nlen; i++) ok = (line[i] >= 'A' && line[i] <= 'Z') || line[i] == '_';
    if (!ok) continue;
    const char *value = eq + 1;
    size_t vlen = len - nlen - 1;
    while (vlen && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t' || value[vlen - 1] == '\r')) vlen--;
    if (vlen >= 2 && (value[0] == '"' || value[0] == '\'') && value[vlen - 1] == value[0]) value++, vlen -= 2;
    locale_env[nlocale++] = out;
    memcpy(out, line, nlen + 1);
    memcpy(out + nlen + 1, value, vlen);
    out += nlen + 1 + vlen;
    *out++ = 0;
  }
}

/* ---- commands ---- */

enum { PROCESS, WRITE_FILE, READ_FILE };

struct command {
  int used;
  int kind;                /* PROCESS, or a file: no process, pid 0 */
  unsigned generation;     /* changes whenever the slot is released */
  uint32_t id;
  pid_t pid;               /* also the process group */
  int out[2];              /* read ends of stdout and stderr; -1 after end of file */
  int in;                  /* write end of stdin; -1 once closed */
  int reaped, status, timed_out, forced, stdin_eof, stdin_broken;
  int64_t deadline, kill_at; /* monotonic ms; 0: none */
  unsigned char *ring;     /* stdin bytes the pipe did not take yet, STDIN_WINDOW bytes */
  uint32_t ring_head, ring_len, ack_pending;
  char *path, *temp, *user; /* a file's path; WRITE_FILE: the new file beside it until renamed, its writer */
  int file_error;           /* errno of a file's failed read or write */
};

static struct command commands[MAX_COMMANDS];
static int command_top; /* one past the highest slot in use */
static int running;

static struct command *find_command(uint32_t id) {
  for (int i = 0; i < command_top; i++) if (commands[i].used && commands[i].id == id) return &commands[i];
  return NULL;
}

static struct command *find_pid(pid_t pid) {
  for (int i = 0; i < command_top; i++) if (commands[i].used && commands[i].pid == pid) return &commands[i];
  return NULL;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void release(struct command *c) {
  close_fd(&c->out[0]);
  close_fd(&c->out[1]);
  close_fd(&c->in);
  free(c->ring);
  if (c->temp) unlink(c->temp); /* a file write that did not finish leaves nothing behind */
  free(c->temp);
  free(c->path);
  free(c->user);
  unsigned generation = c->generation + 1;
  memset(c, 0, sizeof *c);
  c->generation = generation;
  c->out[0] = c->out[1] = c->in = -1;
  running--;
  while (command_top > 0 && !commands[command_top - 1].used) command_top--;
}

/* Kills every command's process group and forgets them; their exits are reaped later. */
static void drop_commands(void) {
  for (int i = 0; i < command_top; i++) {
    struct command *c = &commands[i];
    if (!c->used) continue;
    if (c->pid > 0) kill(-c->pid, SIGKILL);
    release(c);
  }
}

/* ---- the connection ---- */

enum { DISCONNECTED, SYNCING, SYNCED };

static const char *port_path = DEFAULT_PORT;
static int fixed_fd = -1, exit_on_eof;
static int port_fd = -1, conn = DISCONNECTED, port_async;
static int64_t next_check;
static int in_session;
static unsigned char session_nonce[16];
static unsigned char *inbuf, *outbuf;
static size_t in_head, in_tail, out_cap = OUT_CAP, out_head, out_tail;
static int logged_open_error;

static size_t out_pending(void) { return out_tail - out_head; }

static void out_compact(void) {
  if (out_head == out_tail) {
    out_head = out_tail = 0;
  } else if (out_head) {
    memmove(outbuf, outbuf + out_head, out_tail - out_head);
    out_tail -= out_head;
    out_head = 0;
  }
}

/* Room for n more bytes at out_tail; the buffer only grows for control frames when it is full. */
static unsigned char *out_reserve(size_t n) {
  if (out_head == out_tail) out_head = out_tail = 0;
  if (out_cap - out_tail < n) out_compact();
  if (out_cap - out_tail < n) {
    size_t cap = out_cap * 2 > out_tail + n ? out_cap * 2 : out_tail + n;
    unsigned char *bigger = realloc(outbuf, cap);
    if (!bigger) die("out of memory");
    outbuf = bigger;
    out_cap = cap;
  }
  return outbuf + out_tail;
}

static void put_header(unsigned char *p, int type, uint32_t id, uint32_t len) {
  put32(p, len);
  p[4] = (unsigned char)type;
  p[5] = p[6] = p[7] = 0;
  put32(p + 8, id);
}

static void emit(int type, uint32_t id, const void *a, size_t alen, const void *b, size_t blen) {
  if (conn == DISCONNECTED) return;
  unsigned char *p = out_reserve(HDR + alen + blen);
  put_header(p, type, id, (uint32_t)(alen + blen));
  if (alen) memcpy(p + HDR, a, alen);
  if (blen) memcpy(p + HDR + alen, b, blen);
  out_tail += HDR + alen + blen;
}

static void send_error(uint32_t id, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void send_error(uint32_t id, const char *fmt, ...) {
  char message[300];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof message) n = sizeof message - 1;
  emit(R_ERROR, id, message, (size_t)n, NULL, 0);
}

static size_t read_boot_id(char *out, size_t cap) {
  int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, out, cap);
  close(fd);
  if (n <= 0) return 0;
  while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == 0)) n--;
  return (size_t)n;
}

static void protocol_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void protocol_error(const char *fmt, ...) {
  char message[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  say("protocol error: %s; killed %d command(s), waiting for a HELLO", message, running);
  drop_commands();
  send_error(0, "protocol error: %s; the agent killed every command and waits for a HELLO", message);
  in_session = 0;
  conn = SYNCING;
}

/* Writes what the output buffer holds until the port would block. -1: the host end is gone. */
static int flush_out(void) {
  while (out_head < out_tail) {
    ssize_t n = write(port_fd, outbuf + out_head, out_tail - out_head);
    if (n > 0) {
      out_head += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return 0;
    } else {
      return -1;
    }
  }
  out_head = out_tail = 0;
  return 0;
}

static void set_async(int on) {
  if (fixed_fd >= 0 || port_fd < 0 || port_async == on) return;
  /* A virtio port raises SIGIO when the host end connects: no need to poll it often. */
  if (on) fcntl(port_fd, F_SETOWN, getpid());
  set_flags(port_fd, on ? O_ASYNC : 0, on ? 0 : O_ASYNC);
  port_async = on;
}

static void announce(void) {
  unsigned char p[8 + 8 + 64];
  memcpy(p, MAGIC, 8);
  put32(p + 8, PROTOCOL_VERSION);
  put32(p + 12, (uint32_t)getpid());
  size_t n = read_boot_id((char *)p + 16, 64);
  emit(R_READY, 0, p, 16 + n, NULL, 0);
}

static void disconnect(const char *why) {
  if (exit_on_eof) say("host end %s; killing %d command(s) and exiting", why, running);
  else say("host end %s; killed %d command(s), waiting for it to come back", why, running);
  drop_commands();
  in_session = 0;
  in_head = in_tail = out_head = out_tail = 0;
  if (exit_on_eof) exit(0);
  conn = DISCONNECTED;
  /* Stale input of the old host: a virtio port still returns it after the host end closed. */
  for (int i = 0; port_fd >= 0 && i < 4096; i++) {
    ssize_t n = read(port_fd, inbuf, IN_CAP);
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && fixed_fd < 0) close_fd(&port_fd);
    break;
  }
  set_async(1);
  next_check = now_ms() + RECONNECT_MS;
}

/* While disconnected: opens the port if needed and checks whether a host end is there. */
static void check_connection(void) {
  next_check = now_ms() + RECONNECT_MS;
  if (port_fd < 0) {
    port_fd = open(port_path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (port_fd < 0) {
      if (logged_open_error != errno) say("cannot open %s: %s; retrying", port_path, strerror(errno));
      logged_open_error = errno;
      return;
    }
    logged_open_error = 0;
    port_async = 0;
    set_async(1);
  }
  struct pollfd p = {port_fd, POLLIN | POLLOUT, 0};
  if (poll(&p, 1, 0) < 0) return;
  if (p.revents & (POLLERR | POLLNVAL)) {
    if (fixed_fd < 0) close_fd(&port_fd);
    else if (exit_on_eof) exit(0);
    return;
  }
  if (p.revents & POLLHUP) {
    if (exit_on_eof) exit(0);
    return;
  }
  set_async(0);
  conn = SYNCING;
  in_head = in_tail = out_head = out_tail = 0;
  announce();
}

/* ---- requests ---- */

static void on_hello(const unsigned char *p, uint32_t len) {
  if (len != 24 || memcmp(p, MAGIC, 8)) {
    protocol_error("a HELLO of %u bytes without the magic", len);
    return;
  }
  if (!in_session || memcmp(p + 8, session_nonce, 16)) {
    if (running) say("new session: killing %d command(s) of the previous one", running);
    drop_commands();
    memcpy(session_nonce, p + 8, 16);
    in_session = 1;
  }
  unsigned char reply[8 + 16 + 16 + 64];
  memcpy(reply, MAGIC, 8);
  memcpy(reply + 8, session_nonce, 16);
  put32(reply + 24, PROTOCOL_VERSION);
  put32(reply + 28, (uint32_t)getpid());
  put32(reply + 32, STDIN_WINDOW);
  put32(reply + 36, MAX_PAYLOAD);
  size_t n = read_boot_id((char *)reply + 40, 64);
  emit(R_HELLO, 0, reply, 40 + n, NULL, 0);
}

static void exit_frame(uint32_t id, int status, int timed_out) {
  unsigned char p[8];
  const char *sig = "";
  int code;
  if (WIFEXITED(status)) {
    code = WEXITSTATUS(status);
  } else {
    code = -1;
    sig = signal_name(WTERMSIG(status));
  }
  put32(p, (uint32_t)code);
  put32(p + 4, timed_out ? 1 : 0);
  emit(R_EXIT, id, p, 8, sig, strlen(sig));
}

static void stdin_broken(struct command *c) {
  if (c->kind == WRITE_FILE && !c->file_error) c->file_error = errno ? errno : EIO;
  c->stdin_broken = 1;
  c->ack_pending += c->ring_len;
  c->ring_len = 0;
  close_fd(&c->in);
}

/* Writes buffered stdin until the pipe is full; closes it after the host's end of file. */
static void stdin_flush(struct command *c) {
  while (c->ring_len && c->in >= 0) {
    struct iovec v[2];
    uint32_t first = STDIN_WINDOW - c->ring_head < c->ring_len ? STDIN_WINDOW - c->ring_head : c->ring_len;
    v[0].iov_base = c->ring + c->ring_head;
    v[0].iov_len = first;
    v[1].iov_base = c->ring;
    v[1].iov_len = c->ring_len - first;
    ssize_t n = writev(c->in, v, v[1].iov_len ? 2 : 1);
    if (n > 0) {
      c->ring_head = (uint32_t)((c->ring_head + (size_t)n) % STDIN_WINDOW);
      c->ring_len -= (uint32_t)n;
      c->ack_pending += (uint32_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return;
    } else {
      stdin_broken(c);
    }
  }
  if (c->stdin_eof && !c->ring_len) close_fd(&c->in);
}

static void on_stdin(uint32_t id, const unsigned char *p, uint32_t len) {
  struct command *c = find_command(id);
  if (!c) return; /* finished, or never started: its bytes go nowhere */
  if (c->stdin_broken) {
    c->ack_pending += len;
    return;
  }
  if (c->in < 0 || c->stdin_eof) return;
  while (!c->ring_len && len) {
    ssize_t n = write(c->in, p, len);
    if (n > 0) {
      p += n;
      len -= (uint32_t)n;
      c->ack_pending += (uint32_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      break;
    } else {
      stdin_broken(c);
      c->ack_pending += len;
      return;
    }
  }
  if (!len) return;
  if (c->ring_len + (uint64_t)len > STDIN_WINDOW) {
    protocol_error("command %u got more stdin than the window of %u bytes", id, STDIN_WINDOW);
    return;
  }
  if (!c->ring) c->ring = xmalloc(STDIN_WINDOW);
  uint32_t tail = (c->ring_head + c->ring_len) % STDIN_WINDOW;
  uint32_t first = STDIN_WINDOW - tail < len ? STDIN_WINDOW - tail : len;
  memcpy(c->ring + tail, p, first);
  memcpy(c->ring, p + first, len - first);
  c->ring_len += len;
}

/* What the child needs, prepared by the parent: the child shares its memory until execve. */
struct spawn {
  char **argv, **sh_argv, **envp;
  const char *path, *cwd, *home;
  uid_t uid;
  gid_t gid;
  int in, out, err;
};

static struct spawn spawn_args;
static struct account account;
static char env_text[3 * PATH_MAX + 1024];
static char **pointers;
static size_t pointers_cap;
static struct rlimit original_nofile;
static int restore_nofile;
static char child_stack[256 * 1024] __attribute__((aligned(16)));

static void child_fail(const char *what, const char *name, int err, int code) {
  const char *desc = strerrordesc_np(err);
  struct iovec v[7] = {
    {(void *)"guestlab-agent: ", 16}, {(void *)what, strlen(what)}, {(void *)": ", what[0] ? 2 : 0},
    {(void *)name, name ? strlen(name) : 0}, {(void *)": ", name ? 2 : 0},
    {(void *)(desc ? desc : "unknown error"), strlen(desc ? desc : "unknown error")}, {(void *)"\n", 1},
  };
  ssize_t ignored = writev(2, v, 7);
  (void)ignored;
  _exit(code);
}

static void exec_file(struct spawn *s, const char *file) {
  execve(file, s->argv, s->envp);
  if (errno != ENOEXEC) return;
  /* Not a binary and no #!: a shell script, as execvp runs it. */
  int argc = 0;
  while (s->argv[argc]) argc++;
  s->sh_argv[0] = (char *)"/bin/sh";
  s->sh_argv[1] = (char *)file;
  for (int i = 1; i <= argc; i++) s->sh_argv[i + 1] = s->argv[i];
  execve("/bin/sh", s->sh_argv, s->envp);
  errno = ENOEXEC;
}

static int child_main(void *arg) {
  struct spawn *s = arg;
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &dfl, NULL);
  setsid();
  if (dup2(s->in, 0) < 0 || dup2(s->out, 1) < 0 || dup2(s->err, 2) < 0) _exit(126);
  if (restore_nofile) setrlimit(RLIMIT_NOFILE, &original_nofile);
  umask(022);
  if (syscall(SYS_setgroups, ngroups, groups) < 0) child_fail("", "setgroups", errno, 126);
  if (syscall(SYS_setresgid, s->gid, s->gid, s->gid) < 0) child_fail("", "setresgid", errno, 126);
  if (syscall(SYS_setresuid, s->uid, s->uid, s->uid) < 0) child_fail("", "setresuid", errno, 126);
  if (s->cwd) {
    if (chdir(s->cwd) < 0) child_fail("cd", s->cwd, errno, 1);
  } else if (chdir(s->home) < 0 && chdir("/") < 0) {
    child_fail("cd", "/", errno, 1);
  }
  const char *file = s->argv[0];
  int err = ENOENT;
  if (strchr(file, '/')) {
    exec_file(s, file);
    err = errno;
  } else if (strlen(file) > NAME_MAX) {
    err = ENAMETOOLONG;
  } else {
    char candidate[PATH_MAX + NAME_MAX + 2];
    size_t flen = strlen(file);
    int eacces = 0;
    for (const char *dir = s->path;; dir++) {
      const char *end = strchrnul(dir, ':');
      size_t dlen = (size_t)(end - dir);
      if (dlen < PATH_MAX) {
        memcpy(candidate, dir, dlen);
        if (dlen) candidate[dlen++] = '/';
        memcpy(candidate + dlen, file, flen + 1);
        exec_file(s, candidate);
        switch (errno) {
          case EACCES: eacces = 1; break;
          case ENOENT: case ESTALE: case ENOTDIR: case ENODEV: case ETIMEDOUT: break;
          default: child_fail("", file, errno, 126);
        }
      }
      if (!*end) break;
      dir = end;
    }
    if (eacces) err = EACCES;
  }
  child_fail("", file, err, err == ENOENT ? 127 : 126);
  return 126;
}

static int env_name_ok(const char *s) {
  if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_')) return 0;
  for (s++; *s != '='; s++) {
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_')) return 0;
  }
  return 1;
}

/* Whether `entry` ("NAME=...") names a variable that one of env[0..n) sets too. */
static int overridden(const char *entry, char **env, size_t n) {
  size_t len = (size_t)(strchr(entry, '=') - entry) + 1;
  for (size_t i = 0; i < n; i++) if (!strncmp(env[i], entry, len)) return 1;
  return 0;
}

static char **pointer_space(size_t n) {
  if (n > pointers_cap) {
    size_t cap = n > 2 * pointers_cap ? n : 2 * pointers_cap;
    char **bigger = realloc(pointers, cap * sizeof *pointers);
    if (!bigger) die("out of memory");
    pointers = bigger;
    pointers_cap = cap;
  }
  return pointers;
}

static int pipe_pair(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

static void on_exec(uint32_t id, unsigned char *p, uint32_t len) {
  if (id == 0 || find_command(id)) {
    protocol_error(id ? "EXEC with the id %u of a running command" : "EXEC with id %u", id);
    return;
  }
  if (len < 16) {
    send_error(id, "malformed EXEC: %u bytes", len);
    return;
  }
  uint32_t flags = get32(p), timeout = get32(p + 4), argc = get32(p + 8), envc = get32(p + 12);
  if (flags & ~1u || argc == 0 || argc > len || envc > len) {
    send_error(id, "malformed EXEC: flags %#x, %u arguments, %u variables", flags, argc, envc);
    return;
  }
  /* Strings point into the input buffer; each ends in its NUL. */
  size_t count = 2 + (size_t)argc + envc, before = 2 * (size_t)argc + 3 + 5 + LOCALE_MAX + envc + 1;
  char **ptr = pointer_space(before + count);
  char **strings = ptr + before;
  size_t at = 16;
  for (size_t i = 0; i < count; i++) {
    unsigned char *nul = at < len ? memchr(p + at, 0, len - at) : NULL;
    if (!nul) {
      send_error(id, "malformed EXEC: string %zu of %zu is not NUL-terminated", i + 1, count);
      return;
    }
    strings[i] = (char *)p + at;
    at = (size_t)(nul - p) + 1;
  }
  if (at != len) {
    send_error(id, "malformed EXEC: %zu bytes after the strings", len - at);
    return;
  }
  const char *user = strings[0], *cwd = strings[1];
  char **argv_in = strings + 2, **env_in = strings + 2 + argc;
  for (uint32_t i = 0; i < envc; i++) {
    if (!strchr(env_in[i], '=') || !env_name_ok(env_in[i])) {
      send_error(id, "malformed EXEC: environment entry %u is not NAME=value", i + 1);
      return;
    }
  }
  if (*cwd && *cwd != '/') {
    send_error(id, "cwd must be an absolute path");
    return;
  }
  int stdin_follows = flags & 1;
  /* They change nothing and read nothing, whoever runs them: no fork, no user lookup. */
  if (argc == 1 && !envc && !*cwd && !stdin_follows) {
    const char *a = argv_in[0];
    int code = !strcmp(a, "true") || !strcmp(a, ":") ? 0 : !strcmp(a, "false") ? 1 : -1;
    if (code >= 0) {
      exit_frame(id, code << 8, 0);
      return;
    }
  }
  if (running >= MAX_COMMANDS) {
    send_error(id, "too many commands running (%d)", MAX_COMMANDS);
    return;
  }
  if (!lookup_account(*user ? user : "root", &account)) {
    send_error(id, "no user \"%.64s\" in /etc/passwd", *user ? user : "root");
    return;
  }
  collect_groups(&account);
  load_locale();

  /* argv, then room for /bin/sh's argv, then the environment. */
  char **argv = ptr, **sh_argv = ptr + argc + 1, **envp = ptr + 2 * (size_t)argc + 3;
  memcpy(argv, argv_in, argc * sizeof *argv);
  argv[argc] = NULL;
  char *text = env_text;
  char *base[5 + LOCALE_MAX];
  size_t nbase = 0;
  base[nbase++] = (char *)(account.uid == 0 ? ROOT_PATH : USER_PATH);
  const char *pairs[4][2] = {{"HOME", account.home}, {"USER", account.name}, {"LOGNAME", account.name}, {"SHELL", account.shell}};
  for (int i = 0; i < 4; i++) {
    base[nbase++] = text;
    text += sprintf(text, "%s=%s", pairs[i][0], pairs[i][1]) + 1;
  }
  for (size_t i = 0; i < nlocale; i++) base[nbase++] = locale_env[i];
  size_t n = 0;
  for (size_t i = 0; i < nbase; i++) if (!overridden(base[i], env_in, envc)) envp[n++] = base[i];
  for (uint32_t i = 0; i < envc; i++) if (!overridden(env_in[i], env_in + i + 1, envc - i - 1)) envp[n++] = env_in[i];
  envp[n] = NULL;
  const char *path = "";
  for (size_t i = 0; i < n; i++) if (!strncmp(envp[i], "PATH=", 5)) path = envp[i] + 5;

  int in[2], out[2], err[2];
  if (pipe_pair(in) < 0) goto fail;
  if (pipe_pair(out) < 0) { close(in[0]); close(in[1]); goto fail; }
  if (pipe_pair(err) < 0) { close(in[0]); close(in[1]); close(out[0]); close(out[1]); goto fail; }
  fcntl(out[0], F_SETPIPE_SZ, PIPE_BYTES);
  if (stdin_follows) fcntl(in[1], F_SETPIPE_SZ, PIPE_BYTES);
  spawn_args = (struct spawn){argv, sh_argv, envp, path, *cwd ? cwd : NULL, account.home, account.uid, account.gid, in[0], out[1], err[1]};
  pid_t pid = clone(child_main, child_stack + sizeof child_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &spawn_args);
  int saved = errno;
  close(in[0]);
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    close(in[1]);
    close(out[0]);
    close(err[0]);
    errno = saved;
    goto fail;
  }
  struct command *c = NULL;
  for (int i = 0; i < MAX_COMMANDS && !c; i++) if (!commands[i].used) c = &commands[i];
  if (!c) abort(); /* cannot happen: running < MAX_COMMANDS */
  unsigned generation = c->generation;
  memset(c, 0, sizeof *c);
  c->generation = generation;
  c->used = 1;
  c->id = id;
  c->pid = pid;
  c->out[0] = out[0];
  c->out[1] = err[0];
  c->in = in[1];
  /* Fresh pipe ends have no other status flags: one fcntl each. */
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  if (stdin_follows) fcntl(in[1], F_SETFL, O_NONBLOCK);
  else close_fd(&c->in);
  if (timeout) c->deadline = now_ms() + timeout;
  running++;
  if (c - commands >= command_top) command_top = (int)(c - commands) + 1;
  return;
fail:
  saved = errno;
  say("cannot start a command: %s", strerror(saved));
  send_error(id, "cannot start the command: %s", strerror(saved));
}

#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG 0x5207
#endif

/* RENEW: a restored clone's own clock and randomness, in the agent itself (no fork, no exec). */
static void on_renew(uint32_t id, const unsigned char *p, uint32_t len) {
  if (len < 8 + 16 || len > 8 + 256) {
    send_error(id, "malformed RENEW: %u bytes", len);
    return;
  }
  uint64_t ns = (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
  struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
  if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
    send_error(id, "setting the clock: %s", strerror(errno));
    return;
  }
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    send_error(id, "/dev/urandom: %s", strerror(errno));
    return;
  }
  ssize_t n = write(fd, p + 8, len - 8);
  int failed = n != (ssize_t)(len - 8) ? errno ? errno : EIO : ioctl(fd, RNDRESEEDCRNG, 0) < 0 ? errno : 0;
  close(fd);
  if (failed) send_error(id, "reseeding the random number generator: %s", strerror(failed));
  else exit_frame(id, 0, 0);
}

/* ---- files: WRITE_FILE and READ_FILE, with the user's file-system credentials, no process ---- */

/* Takes the user's file-system uid, gid and groups for the calls that follow (root: nothing to do). */
static int enter_user(const struct account *a) {
  if (a->uid == 0) return 0;
  collect_groups(a);
  if (syscall(SYS_setgroups, ngroups, groups) < 0) return -1;
  syscall(SYS_setfsgid, a->gid);
  syscall(SYS_setfsuid, a->uid);
  if ((uid_t)syscall(SYS_setfsuid, (uid_t)-1) != a->uid || (gid_t)syscall(SYS_setfsgid, (gid_t)-1) != a->gid) {
    errno = EPERM;
    return -1;
  }
  return 0;
}

static void leave_user(void) {
  syscall(SYS_setfsuid, 0);
  syscall(SYS_setfsgid, 0);
  syscall(SYS_setgroups, 0, NULL);
}

/* "guestlab-agent: <what>: <path>: <error>" on the command's stderr. */
static void file_message(uint32_t id, const char *what, const char *path, int err) {
  char line[PATH_MAX + 256];
  int n = snprintf(line, sizeof line, "guestlab-agent: %s%s%.*s: %s\n", what, *what ? " " : "", PATH_MAX, path, strerror(err));
  if (n > (int)sizeof line - 1) n = (int)sizeof line - 1;
  emit(R_STDERR, id, line, (size_t)n, NULL, 0);
}

/* A file request that failed before anything started: the message, then EXIT with the errno. */
static void file_refused(uint32_t id, const char *what, const char *path, int err) {
  file_message(id, what, path, err);
  exit_frame(id, (err & 0xff) << 8, 0);
}

/* "user", "user:group", "user:" (the user's login group) or ":group"; names or numbers, as chown(1). */
static int parse_owner(const char *owner, uid_t *uid, gid_t *gid) {
  *uid = (uid_t)-1;
  *gid = (gid_t)-1;
  const char *colon = strchr(owner, ':');
  size_t ulen = colon ? (size_t)(colon - owner) : strlen(owner);
  const char *group = colon ? colon + 1 : "";
  if (ulen) {
    char name[256];
    struct account a;
    uint32_t id;
    if (ulen >= sizeof name) return 0;
    memcpy(name, owner, ulen);
    name[ulen] = 0;
    if (lookup_account(name, &a)) {
      *uid = a.uid;
      if (colon && !*group) *gid = a.gid;
    } else if (parse_id(name, ulen, &id) && !(colon && !*group)) {
      *uid = id;
    } else {
      return 0;
    }
  }
  if (*group) {
    size_t glen = strlen(group);
    uint32_t id;
    refresh(&group_file);
    const char *at = group_file.data, *line;
    size_t len;
    while (next_line(&at, &line, &len)) {
      const char *f[4];
      size_t fl[4];
      if (split_fields(line, len, f, fl, 4) >= 3 && fl[0] == glen && !memcmp(f[0], group, glen) && parse_id(f[2], fl[2], &id)) {
        *gid = id;
        return 1;
      }
    }
    if (!parse_id(group, glen, &id)) return 0;
    *gid = id;
  }
  return 1;
}

/* mkdir -p of the directories above path (mode 0755), as the caller's credentials allow. */
static int make_parents(char *path) {
  for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
    *slash = 0;
    int failed = mkdir(path, 0755) < 0 && errno != EEXIST;
    *slash = '/';
    if (failed) return -1;
  }
  return 0;
}

static struct command *new_command(uint32_t id, int kind) {
  struct command *c = NULL;
  for (int i = 0; i < MAX_COMMANDS && !c; i++) if (!commands[i].used) c = &commands[i];
  if (!c) abort(); /* cannot happen: the caller checked running < MAX_COMMANDS */
  unsigned generation = c->generation;
  memset(c, 0, sizeof *c);
  c->generation = generation;
  c->used = 1;
  c->id = id;
  c->kind = kind;
  c->out[0] = c->out[1] = c->in = -1;
  running++;
  if (c - commands >= command_top) command_top = (int)(c - commands) + 1;
  return c;
}

/* Splits a file request's payload after `skip` bytes into `n` NUL-terminated strings. 0: malformed. */
static int file_strings(unsigned char *p, uint32_t len, size_t skip, char **out, int n) {
  size_t at = skip;
  for (int i = 0; i < n; i++) {
    unsigned char *nul = at < len ? memchr(p + at, 0, len - at) : NULL;
    if (!nul) return 0;
    out[i] = (char *)p + at;
    at = (size_t)(nul - p) + 1;
  }
  return at == len;
}

/* Checks what every file request checks; fills the account. 0: an error was sent. */
static int file_request(uint32_t id, const char *user, const char *path, struct account *a) {
  if (id == 0 || find_command(id)) {
    protocol_error(id ? "a file request with the id %u of a running command" : "a file request with id %u", id);
    return 0;
  }
  if (*path != '/' || strlen(path) >= PATH_MAX) {
    send_error(id, "the path must be absolute and shorter than %d bytes", PATH_MAX);
    return 0;
  }
  if (running >= MAX_COMMANDS) {
    send_error(id, "too many commands running (%d)", MAX_COMMANDS);
    return 0;
  }
  if (!lookup_account(*user ? user : "root", a)) {
    send_error(id, "no user \"%.64s\" in /etc/passwd", *user ? user : "root");
    return 0;
  }
  return 1;
}

static void on_write_file(uint32_t id, unsigned char *p, uint32_t len) {
  char *s[3];
  if (len < 4 || !file_strings(p, len, 4, s, 3)) {
    send_error(id, "malformed WRITE_FILE: %u bytes", len);
    return;
  }
  uint32_t mode = get32(p);
  const char *user = s[0], *owner = s[2];
  char *path = s[1];
  struct account a;
  uid_t uid = (uid_t)-1;
  gid_t gid = (gid_t)-1;
  if (mode > 07777) {
    send_error(id, "malformed WRITE_FILE: mode %#o", mode);
    return;
  }
  if (!file_request(id, user, path, &a)) return;
  if (*owner && a.uid != 0) {
    send_error(id, "only root can give a file another owner");
    return;
  }
  if (*owner && !parse_owner(owner, &uid, &gid)) {
    send_error(id, "no such owner \"%.64s\" (user, user:group or :group, by name or number)", owner);
    return;
  }
  size_t plen = strlen(path);
  if (plen < 2 || path[plen - 1] == '/') {
    file_refused(id, "writing", path, EISDIR);
    return;
  }
  char *temp = xmalloc(plen + 32);
  if (enter_user(&a) < 0) {
    int err = errno;
    leave_user();
    free(temp);
    file_refused(id, "taking the credentials of", a.name, err);
    return;
  }
  int fd = -1, err = 0;
  if (make_parents(path) < 0) err = errno;
  for (int attempt = 0; !err && fd < 0 && attempt < 100; attempt++) {
    static const char letters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    unsigned char r[6];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
      err = errno;
      break;
    }
    char suffix[7];
    for (int i = 0; i < 6; i++) suffix[i] = letters[r[i] % (sizeof letters - 1)];
    suffix[6] = 0;
    snprintf(temp, plen + 32, "%s.guestlab-%s", path, suffix);
    fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) err = errno;
  }
  if (!err && fd < 0) err = EEXIST;
  /* The owner first: chown clears set-id bits that fchmod then sets. */
  const char *step = "creating a file beside";
  if (!err && *owner && fchown(fd, uid, gid) < 0) err = errno, step = "changing the owner of the new file for";
  if (!err && fchmod(fd, (mode_t)mode) < 0) err = errno, step = "changing the mode of the new file for";
  if (err && fd >= 0) {
    close(fd);
    unlink(temp);
  }
  leave_user();
  if (err) {
    free(temp);
    file_refused(id, step, path, err);
    return;
  }
  struct command *c = new_command(id, WRITE_FILE);
  c->in = fd;
  c->temp = temp;
  c->path = strdup(path);
  c->user = strdup(a.name);
  if (!c->path || !c->user) die("out of memory");
}

static void on_read_file(uint32_t id, unsigned char *p, uint32_t len) {
  char *s[2];
  if (!file_strings(p, len, 0, s, 2)) {
    send_error(id, "malformed READ_FILE: %u bytes", len);
    return;
  }
  struct account a;
  if (!file_request(id, s[0], s[1], &a)) return;
  int fd = -1, err = 0;
  if (enter_user(&a) < 0) err = errno;
  else if ((fd = open(s[1], O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)) < 0) err = errno;
  leave_user();
  struct stat st;
  if (!err && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    close(fd);
    err = EISDIR;
  }
  if (err) {
    file_refused(id, "reading", s[1], err);
    return;
  }
  struct command *c = new_command(id, READ_FILE);
  c->out[0] = fd;
  c->reaped = 1; /* done once its bytes are sent */
  c->path = strdup(s[1]);
  if (!c->path) die("out of memory");
}

/* A file's end: a read that failed says so; a write whose input ended is renamed over its path. */
static void finish_file(struct command *c) {
  if (c->kind == READ_FILE) {
    if (c->file_error && c->out[0] < 0 && !c->status) {
      file_message(c->id, "reading", c->path, c->file_error);
      c->status = (c->file_error & 0xff) << 8;
    }
    return;
  }
  if (c->reaped || c->in >= 0 || c->ring_len) return; /* done, or more to write */
  int err = c->file_error;
  const char *step = "writing";
  if (!err && !c->stdin_eof) return;
  if (!err) {
    struct account a;
    if (!lookup_account(c->user, &a)) err = ENOENT, step = "looking up the writer of";
    else if (enter_user(&a) < 0) err = errno, step = "taking the writer's credentials for";
    else if (rename(c->temp, c->path) < 0) err = errno, step = "renaming the new file to";
    else {
      free(c->temp);
      c->temp = NULL;
    }
    leave_user();
  }
  if (err) file_message(c->id, step, c->path, err);
  c->status = (err & 0xff) << 8;
  c->reaped = 1;
}

static void on_kill(uint32_t id, const unsigned char *p, uint32_t len) {
  if (len != 4) {
    protocol_error("a KILL of %u bytes", len);
    return;
  }
  uint32_t sig = get32(p);
  struct command *c = find_command(id);
  if (!c || sig == 0 || sig > 64) return;
  if (c->kind != PROCESS) {
    /* A file has no process: any signal abandons it (a write's new file is removed). */
    c->reaped = c->forced = 1;
    c->status = (int)sig;
    return;
  }
  kill(-c->pid, (int)sig);
  if (sig == SIGKILL) c->forced = 1;
}

static void on_frame(int type, uint32_t id, unsigned char *p, uint32_t len) {
  switch (type) {
    case T_HELLO: on_hello(p, len); break;
    case T_EXEC: on_exec(id, p, len); break;
    case T_STDIN: on_stdin(id, p, len); break;
    case T_STDIN_EOF: {
      struct command *c = find_command(id);
      if (len) protocol_error("a STDIN_EOF of %u bytes", len);
      else if (c && !c->stdin_eof) {
        c->stdin_eof = 1;
        if (!c->ring_len) close_fd(&c->in);
      }
      break;
    }
    case T_KILL: on_kill(id, p, len); break;
    case T_RENEW: on_renew(id, p, len); break;
    case T_WRITE_FILE: on_write_file(id, p, len); break;
    case T_READ_FILE: on_read_file(id, p, len); break;
    case T_PING:
      if (len > MAX_PING) protocol_error("a PING of %u bytes", len);
      else emit(R_PONG, id, p, len, NULL, 0);
      break;
    default: protocol_error("unknown frame type 0x%02x", type);
  }
}

/* Until a HELLO: skips input up to MAGIC preceded by a HELLO header. 1 once found. */
static int find_hello(void) {
  size_t from = in_head + HDR;
  while (from + sizeof MAGIC <= in_tail) {
    unsigned char *m = memmem(inbuf + from, in_tail - from, MAGIC, sizeof MAGIC);
    if (!m) break;
    unsigned char *h = m - HDR;
    if (get32(h) == 24 && h[4] == T_HELLO && !h[5] && !h[6] && !h[7] && get32(h + 8) == 0) {
      in_head = (size_t)(h - inbuf);
      conn = SYNCED;
      return 1;
    }
    from = (size_t)(m - inbuf) + 1;
  }
  size_t keep = HDR + sizeof MAGIC - 1;
  if (in_tail - in_head > keep) in_head = in_tail - keep;
  return 0;
}

static void process_input(void) {
  while (conn != DISCONNECTED && out_pending() < IN_STOP) {
    if (conn == SYNCING && !find_hello()) break;
    size_t avail = in_tail - in_head;
    if (avail < HDR) break;
    unsigned char *h = inbuf + in_head;
    uint32_t len = get32(h), id = get32(h + 8);
    if (len > MAX_PAYLOAD || h[5] || h[6] || h[7]) {
      protocol_error("a frame of %u bytes, type 0x%02x, flags %02x%02x%02x", len, h[4], h[5], h[6], h[7]);
      in_head++; /* rescan from the next byte */
      continue;
    }
    if (avail < HDR + (size_t)len) break;
    in_head += HDR + len;
    on_frame(h[4], id, h + HDR, len);
  }
  if (in_head == in_tail) {
    in_head = in_tail = 0;
  } else if (in_head && IN_CAP - in_tail < 64 * 1024) {
    memmove(inbuf, inbuf + in_head, in_tail - in_head);
    in_tail -= in_head;
    in_head = 0;
  }
}

/* Whether the input ends exactly at the end of a frame (a request arrived whole). */
static int input_at_boundary(void) {
  size_t at = in_head;
  while (at + HDR <= in_tail) at += HDR + (size_t)get32(inbuf + at);
  return at == in_tail;
}

/* Reads what the port has. -1 at end of file or on an error. */
static int read_port(void) {
  for (;;) {
    if (in_tail == IN_CAP) {
      if (!in_head) return 0;
      memmove(inbuf, inbuf + in_head, in_tail - in_head);
      in_tail -= in_head;
      in_head = 0;
    }
    size_t room = IN_CAP - in_tail;
    ssize_t n = read(port_fd, inbuf + in_tail, room);
    if (n > 0) {
      in_tail += (size_t)n;
      /* A virtio port returns at most a page per read, so short reads continue, except when they
       * completed the requests: then the next poll() says whether more came, and a lone request
       * costs no read that only says EAGAIN. */
      if ((size_t)n < room && conn == SYNCED && input_at_boundary()) return 0;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return 0;
    } else {
      return -1;
    }
  }
}

/* ---- children ---- */

static int can_read_children(void) {
  if (conn == DISCONNECTED) return 1; /* output is dropped; keep the pipes moving */
  if (out_head == out_tail) return 1;
  if (out_pending() >= OUT_HIGH) return 0;
  return out_cap - out_tail >= HDR + OUT_CHUNK || out_pending() <= OUT_MOVE;
}

static void read_output(struct command *c, int which) {
  if (out_head == out_tail) out_head = out_tail = 0;
  if (out_cap - out_tail < HDR + OUT_CHUNK) out_compact();
  ssize_t n = read(c->out[which], outbuf + out_tail + HDR, OUT_CHUNK);
  if (n > 0) {
    if (conn == DISCONNECTED) return;
    put_header(outbuf + out_tail, which ? R_STDERR : R_STDOUT, c->id, (uint32_t)n);
    out_tail += HDR + (size_t)n;
  } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
    if (n < 0 && c->kind == READ_FILE) c->file_error = errno;
    close_fd(&c->out[which]);
  }
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    struct command *c = find_pid(pid);
    if (c) {
      c->reaped = 1;
      c->status = status;
    }
  }
}

static void run_timers(int64_t now) {
  for (int i = 0; i < command_top; i++) {
    struct command *c = &commands[i];
    if (!c->used) continue;
    if (c->kind != PROCESS) continue; /* files have no timeout and no process */
    if (c->deadline && now >= c->deadline) {
      c->deadline = 0;
      c->timed_out = 1;
      kill(-c->pid, SIGTERM);
      c->kill_at = now + KILL_AFTER_MS;
    }
    if (c->kill_at && now >= c->kill_at) {
      c->kill_at = 0;
      kill(-c->pid, SIGKILL);
      c->forced = 1;
    }
  }
}

static void finish_commands(void) {
  for (int i = 0; i < command_top; i++) {
    struct command *c = &commands[i];
    if (!c->used) continue;
    if (c->ack_pending) {
      unsigned char p[4];
      put32(p, c->ack_pending);
      emit(R_STDIN_ACK, c->id, p, 4, NULL, 0);
      c->ack_pending = 0;
    }
    if (c->kind != PROCESS) finish_file(c);
    if (c->reaped && (c->forced || (c->out[0] < 0 && c->out[1] < 0))) {
      exit_frame(c->id, c->status, c->timed_out);
      release(c);
    }
  }
}

static int timeout_ms(int64_t now) {
  int64_t next = -1;
  if (conn == DISCONNECTED) next = next_check;
  for (int i = 0; i < command_top; i++) {
    struct command *c = &commands[i];
    if (!c->used) continue;
    if (c->deadline && (next < 0 || c->deadline < next)) next = c->deadline;
    if (c->kill_at && (next < 0 || c->kill_at < next)) next = c->kill_at;
  }
  if (next < 0) return -1;
  return next <= now ? 0 : next - now > 60000 ? 60000 : (int)(next - now);
}

/* ---- main ---- */

static int signal_fd;

static void on_signals(void) {
  struct signalfd_siginfo info[16];
  ssize_t n;
  int chld = 0;
  while ((n = read(signal_fd, info, sizeof info)) > 0) {
    for (size_t i = 0; i < (size_t)n / sizeof info[0]; i++) {
      int sig = (int)info[i].ssi_signo;
      if (sig == SIGCHLD) chld = 1;
      else if (sig == SIGIO) next_check = 0;
      else if (sig == SIGTERM || sig == SIGINT) {
        say("%s: killing %d command(s) and exiting", signal_name(sig), running);
        drop_commands();
        exit(0);
      }
    }
  }
  if (chld) reap();
}

static void usage(int code) {
  fprintf(code ? stderr : stdout, "usage: guestlab-agent [--port PATH] [--fd N] [--exit-on-eof]\n"
          "Serves guestlab's command channel (protocol %d) on PATH (default %s) or on fd N.\n",
          PROTOCOL_VERSION, DEFAULT_PORT);
  exit(code);
}

static void setup(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--port") && i + 1 < argc) port_path = argv[++i];
    else if (!strcmp(argv[i], "--fd") && i + 1 < argc) {
      char *end;
      long fd = strtol(argv[++i], &end, 10);
      if (*end || fd < 0 || fd > INT_MAX) usage(2);
      fixed_fd = (int)fd;
    } else if (!strcmp(argv[i], "--exit-on-eof")) exit_on_eof = 1;
    else if (!strcmp(argv[i], "--help")) usage(0);
    else usage(2);
  }
  /* Pipes must not land on 0-2, which children get from dup2. */
  for (int fd = 0; fd < 3; fd++) {
    if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd) die("/dev/null");
  }
  /* Whatever else the agent inherited stays out of the commands. */
  DIR *fds = opendir("/proc/self/fd");
  for (struct dirent *e; fds && (e = readdir(fds));) {
    int fd = atoi(e->d_name);
    if (fd > 2 && fd != dirfd(fds)) fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  if (fds) closedir(fds);
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGIO);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (signal_fd < 0) die("signalfd");
  if (getrlimit(RLIMIT_NOFILE, &original_nofile) == 0 && original_nofile.rlim_cur < 4 * MAX_COMMANDS + 64) {
    struct rlimit raised = original_nofile;
    raised.rlim_cur = original_nofile.rlim_max < 4 * MAX_COMMANDS + 64 ? original_nofile.rlim_max : 4 * MAX_COMMANDS + 64;
    restore_nofile = setrlimit(RLIMIT_NOFILE, &raised) == 0;
  }
  inbuf = xmalloc(IN_CAP);
  outbuf = xmalloc(out_cap);
  for (int i = 0; i < MAX_COMMANDS; i++) commands[i].out[0] = commands[i].out[1] = commands[i].in = -1;
  if (fixed_fd >= 0) {
    port_fd = fixed_fd;
    if (fcntl(port_fd, F_SETFD, FD_CLOEXEC) < 0) die("--fd");
    set_flags(port_fd, O_NONBLOCK, 0);
  }
}

int main(int argc, char **argv) {
  setup(argc, argv);
  say("protocol %d, serving %s", PROTOCOL_VERSION, fixed_fd >= 0 ? "an inherited fd" : port_path);
  static struct pollfd fds[2 + 3 * MAX_COMMANDS];
  static struct { struct command *c; unsigned generation; int which; } owner[2 + 3 * MAX_COMMANDS];
  for (;;) {
    int64_t now = now_ms();
    if (conn == DISCONNECTED && now >= next_check) check_connection();
    int n = 0;
    fds[n++] = (struct pollfd){signal_fd, POLLIN, 0};
    int port_at = -1;
    if (conn != DISCONNECTED) {
      short events = (out_pending() ? POLLOUT : 0) | (out_pending() < IN_STOP ? POLLIN : 0);
      port_at = n;
      fds[n++] = (struct pollfd){port_fd, events, 0};
    }
    int children = can_read_children();
    for (int i = 0; i < command_top; i++) {
      struct command *c = &commands[i];
      if (!c->used) continue;
      for (int w = 0; w < 2; w++) {
        if (c->out[w] < 0 || !children) continue;
        owner[n].c = c, owner[n].generation = c->generation, owner[n].which = w;
        fds[n++] = (struct pollfd){c->out[w], POLLIN, 0};
      }
      if (c->in >= 0 && c->ring_len) {
        owner[n].c = c, owner[n].generation = c->generation, owner[n].which = 2;
        fds[n++] = (struct pollfd){c->in, POLLOUT, 0};
      }
    }
    if (poll(fds, (nfds_t)n, timeout_ms(now)) < 0 && errno != EINTR) die("poll");
    if (fds[0].revents) on_signals();
    for (int i = port_at < 0 ? 1 : 2; i < n; i++) {
      struct command *c = owner[i].c;
      if (!fds[i].revents || !c->used || c->generation != owner[i].generation) continue;
      if (owner[i].which == 2) stdin_flush(c);
      else if (c->out[owner[i].which] == fds[i].fd && can_read_children()) read_output(c, owner[i].which);
    }
    if (port_at >= 0 && conn != DISCONNECTED) {
      short revents = fds[port_at].revents;
      int gone = 0;
      if (revents & POLLIN) gone = read_port() < 0;
      else if (revents & (POLLHUP | POLLERR)) gone = 1;
      process_input();
      if (gone) disconnect("closed");
    } else if (conn != DISCONNECTED) {
      process_input();
    }
    run_timers(now_ms());
    finish_commands();
    if (conn != DISCONNECTED && out_pending() && flush_out() < 0) disconnect("failed");
  }
}
