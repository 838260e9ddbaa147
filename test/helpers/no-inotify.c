/*
 * Preloaded into a server to give it what a host whose inotify instances are used up gives
 * (fs.inotify.max_user_instances reached by other programs of the same user): inotify_init and
 * inotify_init1 fail with EMFILE, as the kernel's own answer then. Nothing else changes.
 */
#include <errno.h>

int inotify_init(void) { errno = EMFILE; return -1; }
int inotify_init1(int flags) { (void)flags; errno = EMFILE; return -1; }
