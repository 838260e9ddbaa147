/*
 * Disk faults for a real server process, injected at the C library (LD_PRELOAD): while the file
 * $POSTERN_DISK_FAULTS/<fault> exists, the next matching call on a journal segment (a path ending in
 * ".seg"), or for fsync-queue-eio on a spool's queue folder, fails or is cut short, once per file created
 * (the process that claims it removes it).
 *   fdatasync-eio  fdatasync() fails with EIO, as after a lost write-back
 *   pwritev-short  pwritev() writes half of its first buffer and reports that (a short write)
 *   pwritev-eio    pwritev() fails with EIO
 *   pread-eio      pread() fails with EIO (a bad block read back)
 *   fsync-queue-eio  fsync() of a folder named "queue" fails with EIO (a directory entry maybe not durable)
 *   open-watchdog-emfile  open() of the watchdog thread's module fails with EMFILE (out of descriptors as
 *                  the thread starts)
 *   socket-emfile  the next socket() for a TCP stream (IPv4 or IPv6) fails with EMFILE: out of descriptors as a
 *                  connection is made (a delivery's connect)
 * And faults on any file, whose trigger file holds the end of the path they are for:
 *   fsync-eio      fsync() of a file or folder whose path ends so fails with EIO
 *   rename-kill    the process is killed (SIGKILL) as it renames a file over a path that ends so: a crash
 *                  between two whole-file writes
 *   rename-stop    the process stops (SIGSTOP) as it renames a file over a path that ends so, before the rename:
 *                  the test lets another process act, then continues it (SIGCONT)
 *   fsync-kill     the process is killed (SIGKILL) as it calls fsync() of a file or folder whose path ends so
 *   open-stop      the process stops (SIGSTOP) as it opens a file whose path ends so, before the open
 *   fdatasync-hang not taken once: for as long as the trigger file exists, every fdatasync() of a file whose path
 *                  ends so waits (a disk that stopped answering: a lost SAN or NFS path, a drive in endless
 *                  retries); once it is removed, the calls waiting go on and succeed. Each call that waits
 *                  appends a line to $POSTERN_DISK_FAULTS/fdatasync-hang.calls
 *   fsync-hang     as fdatasync-hang, for fsync() of a file or folder whose path ends so (a journal's done list, a
 *                  folder's entries); each call that waits appends a line to $POSTERN_DISK_FAULTS/fsync-hang.calls
 *   statfs-hang    as fdatasync-hang, for statfs() of a path that ends so (a network filesystem whose server stopped
 *                  answering: a hard NFS mount waits in every call that asks the server); each call that waits
 *                  appends a line to $POSTERN_DISK_FAULTS/statfs-hang.calls
 *   write-short    write() to a file whose path ends so writes half of what it is given and reports that, and
 *                  the next write() to it fails with ENOSPC: a full disk, for a write that needs a new block
 *   stat-eio       the next stat of a path that ends so fails with EIO (a bad block in the inode table, a failing
 *                  disk): Node's fs.stat is libuv's statx, made through syscall(2), not a stat of the C library,
 *                  and so taken there; fs.existsSync is access(2), taken too
 *   mkdir-swap     once mkdir() has made a folder whose path ends so, it is replaced by a symbolic link to the
 *                  path in $POSTERN_DISK_FAULTS/mkdir-swap.target: another user who may write the parent folder
 *                  swapping it before the caller's next step
 * And a crash walk (test/helpers/crash-walk.ts), when $POSTERN_CRASH_WALK names its folder: every call that changes
 * durable state under the path in <folder>/root (open with O_CREAT, write, pwrite, writev, pwritev, fsync,
 * fdatasync, ftruncate, rename, unlink, mkdir) made while <folder>/at exists is counted, by all the processes of the
 * server together (a counter in <folder>/counter, shared memory), and logged to <folder>/trace
 * ("<n> <pid> <call> <path>"). <folder>/at holds "<n> <action> [<call> <path end>]": the n-th counted call (of
 * those named so, when it names them: `*` for any call) is taken, and the file removed: `kill` kills the process (SIGKILL) before the call, `after` once the call is made, `eio` fails it with
 * EIO, `slow-eio` too after 1.5 s waited inside a file-system call (a failing disk's retries), `none` only counts.
 * Built by test/helpers/disk-faults.ts.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <sys/mman.h>
#include <pthread.h>
#include <unistd.h>

static int path_ends_with(int fd, const char *suffix) {
  char link[64], path[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  size_t k = strlen(suffix);
  if (n < (ssize_t)k) return 0;
  path[n] = 0;
  return strcmp(path + n - k, suffix) == 0;
}

/* The fault is armed for a file whose path ends with `suffix`, and this call is the one that takes it. */
static int claim_on(const char *fault, int fd, const char *suffix) {
  const char *dir = getenv("POSTERN_DISK_FAULTS");
  if (!dir) return 0;
  char trigger[PATH_MAX];
  snprintf(trigger, sizeof trigger, "%s/%s", dir, fault);
  if (access(trigger, F_OK) != 0 || !path_ends_with(fd, suffix)) return 0;
  return unlink(trigger) == 0;
}

static int claim(const char *fault, int fd) { return claim_on(fault, fd, ".seg"); }

/* The suffix an any-file fault's trigger file holds, or 0 when it is not armed. */
static int armed_suffix(const char *fault, char *trigger, char *suffix) {
  const char *dir = getenv("POSTERN_DISK_FAULTS");
  if (!dir) return 0;
  snprintf(trigger, PATH_MAX, "%s/%s", dir, fault);
  FILE *f = fopen(trigger, "r");
  if (!f) return 0;
  size_t n = fread(suffix, 1, PATH_MAX - 1, f);
  fclose(f);
  suffix[n] = 0;
  return n > 0;
}

static int ends_with(const char *path, const char *suffix) {
  size_t n = strlen(path), k = strlen(suffix);
  return n >= k && strcmp(path + n - k, suffix) == 0;
}

/* One more call waits in a fault that holds: a line appended to $POSTERN_DISK_FAULTS/<fault>.calls. */
static void note_hung_call(const char *fault) {
  char file[PATH_MAX];
  snprintf(file, sizeof file, "%s/%s.calls", getenv("POSTERN_DISK_FAULTS"), fault);
  int out = open(file, O_WRONLY | O_CREAT | O_APPEND, 0600);
  if (out < 0) return;
  if (write(out, "1\n", 2) != 2) { /* the count is then short: the test says so */ }
  close(out);
}

/* An any-file fault that holds for as long as its trigger file exists (not taken by the call), for the file at `fd`. */
static int hanging(const char *fault, int fd) {
  char trigger[PATH_MAX], suffix[PATH_MAX];
  return armed_suffix(fault, trigger, suffix) && path_ends_with(fd, suffix);
}

/* An any-file fault armed for `path` (or, without one, the file open at `fd`), claimed by this call. */
static int claim_any(const char *fault, int fd, const char *path) {
  char trigger[PATH_MAX], suffix[PATH_MAX];
  if (!armed_suffix(fault, trigger, suffix)) return 0;
  if (path ? !ends_with(path, suffix) : !path_ends_with(fd, suffix)) return 0;
  return unlink(trigger) == 0;
}

/*
 * Stop the process (SIGSTOP, until the test sends SIGCONT) before this thread's next step: sent to this thread, as a
 * stop sent to the process may be taken by another thread while this one goes on with the call.
 */
static void stop_this_thread(void) { syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGSTOP); }


/* The crash walk (see the top of this file). */
static pthread_once_t walk_once = PTHREAD_ONCE_INIT;
static int walk_on;
static char walk_dir[PATH_MAX], walk_root[PATH_MAX];
static size_t walk_root_len;
static long *walk_counter;

static void walk_init(void) {
  const char *dir = getenv("POSTERN_CRASH_WALK");
  if (!dir) return;
  snprintf(walk_dir, sizeof walk_dir, "%s", dir);
  char file[PATH_MAX];
  snprintf(file, sizeof file, "%s/root", dir);
  int fd = syscall(SYS_openat, AT_FDCWD, file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = syscall(SYS_read, fd, walk_root, sizeof walk_root - 1);
  syscall(SYS_close, fd);
  if (n <= 0) return;
  walk_root[n] = 0;
  walk_root_len = (size_t)n;
  snprintf(file, sizeof file, "%s/counter", dir);
  fd = syscall(SYS_openat, AT_FDCWD, file, O_RDWR | O_CLOEXEC);
  if (fd < 0) return;
  void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  syscall(SYS_close, fd);
  if (p == MAP_FAILED) return;
  walk_counter = p;
  walk_on = 1;
}

enum walk_action { WALK_GO, WALK_EIO, WALK_AFTER };

struct fifo_reader { const char *path; unsigned ms; int fd; };

static void *open_fifo_later(void *arg) {
  struct fifo_reader *r = arg;
  usleep(r->ms * 1000);
  r->fd = syscall(SYS_openat, AT_FDCWD, r->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  return NULL;
}

/* Wait `ms` inside a file-system call, as a thread does on a disk slow to answer (not in a sleep of its own, which the
   hang checks would tell apart): an open of a FIFO for writing, which the kernel holds until a reader opens it, and a
   thread of ours does `ms` later. */
static void wait_in_kernel(unsigned ms) {
  char fifo[PATH_MAX];
  snprintf(fifo, sizeof fifo, "%s/slow.%d.%ld.fifo", walk_dir, getpid(), (long)syscall(SYS_gettid));
  if (mkfifo(fifo, 0600) != 0) { usleep(ms * 1000); return; }
  struct fifo_reader r = { fifo, ms, -1 };
  pthread_t t;
  if (pthread_create(&t, NULL, open_fifo_later, &r) != 0) { syscall(SYS_unlinkat, AT_FDCWD, fifo, 0); usleep(ms * 1000); return; }
  int fd = syscall(SYS_openat, AT_FDCWD, fifo, O_WRONLY | O_CLOEXEC);
  pthread_join(t, NULL);
  if (fd >= 0) syscall(SYS_close, fd);
  if (r.fd >= 0) syscall(SYS_close, r.fd);
  syscall(SYS_unlinkat, AT_FDCWD, fifo, 0);
}

/* Count a call on `path` (or the file open at `fd`); what to do with it. A kill before the call happens here. */
static enum walk_action walk_point(const char *call, int fd, const char *path) {
  pthread_once(&walk_once, walk_init);
  if (!walk_on) return WALK_GO;
  char resolved[PATH_MAX];
  if (!path) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, resolved, sizeof resolved - 1);
    if (n <= 0) return WALK_GO;
    resolved[n] = 0;
    path = resolved;
  }
  if (strncmp(path, walk_root, walk_root_len) != 0) return WALK_GO;
  char at_file[PATH_MAX], at_text[PATH_MAX];
  snprintf(at_file, sizeof at_file, "%s/at", walk_dir);
  int at_fd = syscall(SYS_openat, AT_FDCWD, at_file, O_RDONLY | O_CLOEXEC);
  if (at_fd < 0) return WALK_GO;
  ssize_t k = syscall(SYS_read, at_fd, at_text, sizeof at_text - 1);
  syscall(SYS_close, at_fd);
  if (k <= 0) return WALK_GO;
  at_text[k] = 0;
  long want = 0;
  char action[16] = "", only_call[16] = "*", only_end[256] = "";
  sscanf(at_text, "%ld %15s %15s %255s", &want, action, only_call, only_end);
  long n = __atomic_add_fetch(walk_counter, 1, __ATOMIC_SEQ_CST);
  int named = (strcmp(only_call, "*") == 0 || strcmp(only_call, call) == 0) && ends_with(path, only_end);
  long nth = named ? __atomic_add_fetch(walk_counter + 1, 1, __ATOMIC_SEQ_CST) : 0;
  char line[PATH_MAX + 96], trace[PATH_MAX];
  int len = snprintf(line, sizeof line, "%ld %d %s %s\n", n, getpid(), call, path);
  snprintf(trace, sizeof trace, "%s/trace", walk_dir);
  int trace_fd = syscall(SYS_openat, AT_FDCWD, trace, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (trace_fd >= 0) { syscall(SYS_write, trace_fd, line, len); syscall(SYS_close, trace_fd); }
  if (!named || nth != want || syscall(SYS_unlinkat, AT_FDCWD, at_file, 0) != 0) return WALK_GO;
  /* The point taken, told apart from calls of other processes that read <folder>/at before it went and so were
     counted later (the trace's last line need not be this one). */
  char hit[PATH_MAX];
  snprintf(hit, sizeof hit, "%s/hit", walk_dir);
  int hit_fd = syscall(SYS_openat, AT_FDCWD, hit, O_WRONLY | O_TRUNC | O_CREAT | O_CLOEXEC, 0600);
  if (hit_fd >= 0) { syscall(SYS_write, hit_fd, line, len); syscall(SYS_close, hit_fd); }
  if (strcmp(action, "kill") == 0) kill(getpid(), SIGKILL);
  if (strcmp(action, "eio") == 0) return WALK_EIO;
  if (strcmp(action, "slow-eio") == 0) { wait_in_kernel(1500); return WALK_EIO; }
  if (strcmp(action, "after") == 0) return WALK_AFTER;
  return WALK_GO;
}

/* Run a counted call: failed, made, or made and then the process killed, as the walk says. */
#define WALKED(call, fd, path, type, make) do { \
    enum walk_action walk_ = walk_point(call, fd, path); \
    if (walk_ == WALK_EIO) { errno = EIO; return (type)-1; } \
    type made_ = (make); \
    if (walk_ == WALK_AFTER) kill(getpid(), SIGKILL); \
    return made_; \
  } while (0)

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = dlsym(RTLD_NEXT, "fsync");
  if (claim_on("fsync-queue-eio", fd, "/queue")) { errno = EIO; return -1; }
  if (claim_any("fsync-eio", fd, NULL)) { errno = EIO; return -1; }
  if (claim_any("fsync-kill", fd, NULL)) kill(getpid(), SIGKILL);
  if (hanging("fsync-hang", fd)) {
    note_hung_call("fsync-hang");
    char trigger[PATH_MAX], suffix[PATH_MAX];
    while (armed_suffix("fsync-hang", trigger, suffix)) usleep(10000);
  }
  WALKED("fsync", fd, NULL, int, real(fd));
}

ssize_t write(int fd, const void *buf, size_t n) {
  static ssize_t (*real)(int, const void *, size_t);
  if (!real) real = dlsym(RTLD_NEXT, "write");
  static int full = -1; /* the file cut short: its next write finds the disk full */
  if (fd == full) { full = -1; errno = ENOSPC; return -1; }
  if (n > 1 && fd > 2 && claim_any("write-short", fd, NULL)) { full = fd; return real(fd, buf, n / 2); }
  if (fd <= 2) return real(fd, buf, n);
  WALKED("write", fd, NULL, ssize_t, real(fd, buf, n));
}

int mkdir(const char *path, mode_t mode) {
  static int (*real)(const char *, mode_t);
  if (!real) real = dlsym(RTLD_NEXT, "mkdir");
  int made = real(path, mode);
  if (made == 0 && walk_point("mkdir", -1, path) == WALK_AFTER) kill(getpid(), SIGKILL);
  if (made == 0 && claim_any("mkdir-swap", -1, path)) {
    char file[PATH_MAX], target[PATH_MAX];
    snprintf(file, sizeof file, "%s/mkdir-swap.target", getenv("POSTERN_DISK_FAULTS"));
    FILE *f = fopen(file, "r");
    size_t n = f ? fread(target, 1, sizeof target - 1, f) : 0;
    if (f) fclose(f);
    target[n] = 0;
    rmdir(path);
    symlink(target, path);
  }
  return made;
}

int rename(const char *from, const char *to) {
  static int (*real)(const char *, const char *);
  if (!real) real = dlsym(RTLD_NEXT, "rename");
  if (to && claim_any("rename-kill", -1, to)) kill(getpid(), SIGKILL);
  if (to && claim_any("rename-stop", -1, to)) stop_this_thread();
  WALKED("rename", -1, to, int, real(from, to));
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = dlsym(RTLD_NEXT, "fdatasync");
  if (claim("fdatasync-eio", fd)) { errno = EIO; return -1; }
  if (hanging("fdatasync-hang", fd)) {
    note_hung_call("fdatasync-hang");
    /* Until the fault is disarmed, whatever becomes of the descriptor meanwhile (closed by another thread: a real
       sync in the kernel holds its file all the same). */
    char trigger[PATH_MAX], suffix[PATH_MAX];
    while (armed_suffix("fdatasync-hang", trigger, suffix)) usleep(10000);
  }
  WALKED("fdatasync", fd, NULL, int, real(fd));
}

/* statfs-hang (see the top of this file): held while armed for `path`. */
static void statfs_hold(const char *path) {
  char trigger[PATH_MAX], suffix[PATH_MAX];
  if (!path || !armed_suffix("statfs-hang", trigger, suffix) || !ends_with(path, suffix)) return;
  note_hung_call("statfs-hang");
  while (armed_suffix("statfs-hang", trigger, suffix)) usleep(10000);
}

int statfs(const char *path, struct statfs *buf) {
  static int (*real)(const char *, struct statfs *);
  if (!real) real = dlsym(RTLD_NEXT, "statfs");
  statfs_hold(path);
  return real(path, buf);
}

int statfs64(const char *path, struct statfs64 *buf) {
  static int (*real)(const char *, struct statfs64 *);
  if (!real) real = dlsym(RTLD_NEXT, "statfs64");
  statfs_hold(path);
  return real(path, buf);
}

static ssize_t faulty_pwritev(ssize_t (*real)(int, const struct iovec *, int, off_t), int fd, const struct iovec *iov, int n, off_t at) {
  if (claim("pwritev-eio", fd)) { errno = EIO; return -1; }
  if (n > 0 && iov[0].iov_len > 1 && claim("pwritev-short", fd)) return pwrite(fd, iov[0].iov_base, iov[0].iov_len / 2, at);
  WALKED("pwritev", fd, NULL, ssize_t, real(fd, iov, n, at));
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t at) {
  static ssize_t (*real)(int, const struct iovec *, int, off_t);
  if (!real) real = dlsym(RTLD_NEXT, "pwritev");
  return faulty_pwritev(real, fd, iov, n, at);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t at) {
  static ssize_t (*real)(int, const struct iovec *, int, off_t);
  if (!real) real = dlsym(RTLD_NEXT, "pwritev64");
  return faulty_pwritev(real, fd, iov, n, at);
}

static ssize_t faulty_pread(ssize_t (*real)(int, void *, size_t, off_t), int fd, void *buf, size_t len, off_t at) {
  if (claim("pread-eio", fd)) { errno = EIO; return -1; }
  return real(fd, buf, len, at);
}

ssize_t pread(int fd, void *buf, size_t len, off_t at) {
  static ssize_t (*real)(int, void *, size_t, off_t);
  if (!real) real = dlsym(RTLD_NEXT, "pread");
  return faulty_pread(real, fd, buf, len, at);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t at) {
  static ssize_t (*real)(int, void *, size_t, off_t);
  if (!real) real = dlsym(RTLD_NEXT, "pread64");
  return faulty_pread(real, fd, buf, len, at);
}

/* By path, before there is a descriptor. */
static int claim_path(const char *fault, const char *path, const char *suffix) {
  const char *dir = getenv("POSTERN_DISK_FAULTS");
  if (!dir || !path) return 0;
  size_t n = strlen(path), k = strlen(suffix);
  if (n < k || strcmp(path + n - k, suffix) != 0) return 0;
  char trigger[PATH_MAX];
  snprintf(trigger, sizeof trigger, "%s/%s", dir, fault);
  return access(trigger, F_OK) == 0 && unlink(trigger) == 0;
}

#define OPEN_WRAPPER(name, ...) \
  int name(const char *path, int flags, ...) { \
    static int (*real)(const char *, int, ...); \
    if (!real) real = dlsym(RTLD_NEXT, #name); \
    mode_t mode = 0; \
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); } \
    if (claim_path("open-watchdog-emfile", path, "/watchdog-thread.ts")) { errno = EMFILE; return -1; } \
    if (claim_any("open-stop", -1, path)) stop_this_thread(); \
    if (flags & O_CREAT) WALKED("open", -1, path, int, real(path, flags, mode)); \
    return real(path, flags, mode); \
  }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

#define OPENAT_WRAPPER(name) \
  int name(int dirfd, const char *path, int flags, ...) { \
    static int (*real)(int, const char *, int, ...); \
    if (!real) real = dlsym(RTLD_NEXT, #name); \
    mode_t mode = 0; \
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); } \
    if (claim_path("open-watchdog-emfile", path, "/watchdog-thread.ts")) { errno = EMFILE; return -1; } \
    if (claim_any("open-stop", -1, path)) stop_this_thread(); \
    if ((flags & O_CREAT) && path[0] == '/') WALKED("open", -1, path, int, real(dirfd, path, flags, mode)); \
    return real(dirfd, path, flags, mode); \
  }
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)

/* Calls only the crash walk looks at. */
int unlink(const char *path) {
  static int (*real)(const char *);
  if (!real) real = dlsym(RTLD_NEXT, "unlink");
  WALKED("unlink", -1, path, int, real(path));
}

#define PWRITE_WRAPPER(name) \
  ssize_t name(int fd, const void *buf, size_t n, off_t at) { \
    static ssize_t (*real)(int, const void *, size_t, off_t); \
    if (!real) real = dlsym(RTLD_NEXT, #name); \
    WALKED("pwrite", fd, NULL, ssize_t, real(fd, buf, n, at)); \
  }
PWRITE_WRAPPER(pwrite)
PWRITE_WRAPPER(pwrite64)

ssize_t writev(int fd, const struct iovec *iov, int n) {
  static ssize_t (*real)(int, const struct iovec *, int);
  if (!real) real = dlsym(RTLD_NEXT, "writev");
  if (fd <= 2) return real(fd, iov, n);
  WALKED("writev", fd, NULL, ssize_t, real(fd, iov, n));
}

#define FTRUNCATE_WRAPPER(name) \
  int name(int fd, off_t length) { \
    static int (*real)(int, off_t); \
    if (!real) real = dlsym(RTLD_NEXT, #name); \
    WALKED("ftruncate", fd, NULL, int, real(fd, length)); \
  }
FTRUNCATE_WRAPPER(ftruncate)
FTRUNCATE_WRAPPER(ftruncate64)

/* socket-emfile (see the top of this file). */
int socket(int domain, int type, int protocol) {
  static int (*real)(int, int, int);
  if (!real) real = dlsym(RTLD_NEXT, "socket");
  if ((domain == AF_INET || domain == AF_INET6) && (type & 0xf) == SOCK_STREAM && claim_path("socket-emfile", "", "")) {
    errno = EMFILE;
    return -1;
  }
  return real(domain, type, protocol);
}

/* stat-eio (see the top of this file): libuv makes its statx through syscall(2), so the fault is taken there. */
long syscall(long number, ...) {
  static long (*real)(long, ...);
  if (!real) real = dlsym(RTLD_NEXT, "syscall");
  va_list ap;
  va_start(ap, number);
  long a[6];
  for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
  va_end(ap);
  if (number == SYS_statx && a[1] && claim_any("stat-eio", -1, (const char *)a[1])) { errno = EIO; return -1; }
  return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* And fs.existsSync's access(2). */
int access(const char *path, int mode) {
  static int (*real)(const char *, int);
  if (!real) real = dlsym(RTLD_NEXT, "access");
  if (claim_any("stat-eio", -1, path)) { errno = EIO; return -1; }
  return real(path, mode);
}
