/*
 * systemd's RestrictAddressFamilies= for a test: `restrict-address-families 1,2,10 -- command args…` runs the
 * command with a seccomp filter that fails socket(2) with EAFNOSUPPORT for any other family (systemd's filter
 * does the same). Needs no_new_privs (setpriv --no-new-privs before it) or CAP_SYS_ADMIN. x86-64 only: on another
 * architecture the command runs unfiltered (socket(2) has other numbers there).
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "--") != 0) {
    fprintf(stderr, "usage: %s FAMILY[,FAMILY…] -- command [args…]\n", argv[0]);
    return 2;
  }
  int families[16];
  int n = 0;
  for (char *p = strtok(argv[1], ","); p && n < 16; p = strtok(NULL, ",")) families[n++] = atoi(p);
  struct sock_filter filter[64];
  int i = 0;
  filter[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  filter[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
  filter[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  filter[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
  filter[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 1, 0);
  filter[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  filter[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
  for (int f = 0; f < n; f++) {
    filter[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)families[f], 0, 1);
    filter[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  }
  filter[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EAFNOSUPPORT & SECCOMP_RET_DATA));
  struct sock_fprog prog = { .len = (unsigned short)i, .filter = filter };
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
    perror("restrict-address-families: seccomp");
    return 1;
  }
  execvp(argv[3], argv + 3);
  perror("restrict-address-families: exec");
  return 127;
}
