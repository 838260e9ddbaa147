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
 * And faults on any file, whose trigger file holds the end of the path they are for:
 *   fsync-eio      fsync() of a file or folder whose path ends so fails with EIO
 *   rename-kill    the process is killed (SIGKILL) as it renames a file over a path that ends so: a crash
 *                  between two whole-file writes
 *   rename-stop    the process stops (SIGSTOP) as it renames a file over a path that ends so, before the rename:
 *                  the test lets another process act, then continues it (SIGCONT)
 *   fsync-kill     the process is killed (SIGKILL) as it calls fsync() of a file or folder whose path ends so
 *   open-stop      the process stops (SIGSTOP) as it opens a file whose path ends so, before the open
 *   write-short    write() to a file whose path ends so writes half of what it is given and reports that, and
 *                  the next write() to it fails with ENOSPC: a full disk, for a write that needs a new block
 *   mkdir-swap     once mkdir() has made a folder whose path ends so, it is replaced by a symbolic link to the
 *                  path in $POSTERN_DISK_FAULTS/mkdir-swap.target: another user who may write the parent folder
 *                  swapping it before the caller's next step
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
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
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

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = dlsym(RTLD_NEXT, "fsync");
  if (claim_on("fsync-queue-eio", fd, "/queue")) { errno = EIO; return -1; }
  if (claim_any("fsync-eio", fd, NULL)) { errno = EIO; return -1; }
  if (claim_any("fsync-kill", fd, NULL)) kill(getpid(), SIGKILL);
  return real(fd);
}

ssize_t write(int fd, const void *buf, size_t n) {
  static ssize_t (*real)(int, const void *, size_t);
  if (!real) real = dlsym(RTLD_NEXT, "write");
  static int full = -1; /* the file cut short: its next write finds the disk full */
  if (fd == full) { full = -1; errno = ENOSPC; return -1; }
  if (n > 1 && fd > 2 && claim_any("write-short", fd, NULL)) { full = fd; return real(fd, buf, n / 2); }
  return real(fd, buf, n);
}

int mkdir(const char *path, mode_t mode) {
  static int (*real)(const char *, mode_t);
  if (!real) real = dlsym(RTLD_NEXT, "mkdir");
  int made = real(path, mode);
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
  return real(from, to);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = dlsym(RTLD_NEXT, "fdatasync");
  if (claim("fdatasync-eio", fd)) { errno = EIO; return -1; }
  return real(fd);
}

static ssize_t faulty_pwritev(ssize_t (*real)(int, const struct iovec *, int, off_t), int fd, const struct iovec *iov, int n, off_t at) {
  if (claim("pwritev-eio", fd)) { errno = EIO; return -1; }
  if (n > 0 && iov[0].iov_len > 1 && claim("pwritev-short", fd)) return pwrite(fd, iov[0].iov_base, iov[0].iov_len / 2, at);
  return real(fd, iov, n, at);
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
    return real(dirfd, path, flags, mode); \
  }
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)
