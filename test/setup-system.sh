#!/usr/bin/env sh
# Installs the Debian packages the tests drive as real peers (swaks, msmtp, curl, openssl, python3, Postfix,
# redis-server for the shared counter store, HAProxy in front for the PROXY protocol, Chromium for the
# accounts page, python3-dkim as an independent DKIM verifier, libfaketime to step a server's wall clock,
# gcc to build the preload library that injects disk faults into a running server: test/helpers/disk-faults.c)
# and the tools they check shipped files with (fail2ban-regex, systemd-analyze, logrotate; systemd-journal-remote
# and python3-systemd to read a journal file with fail2ban's systemd backend; promtool, from prometheus, for the
# alert rules of docs/operations.md), and strace to count
# the system calls of a command (test/queue/long-queue.test.ts).
# Idempotent; needs root (or sudo) only when something is missing.
set -eu
missing=""
for tool in swaks openssl curl python3 msmtp; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
command -v fail2ban-regex >/dev/null 2>&1 || missing="$missing fail2ban"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
[ -x /lib/systemd/systemd-journal-remote ] || missing="$missing systemd-journal-remote"
/usr/bin/python3 -c "import systemd.journal" 2>/dev/null || missing="$missing python3-systemd"
perl -MNet::SSLeay -e1 2>/dev/null || missing="$missing libnet-ssleay-perl"
[ -x /usr/sbin/postfix ] || missing="$missing postfix"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
[ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
/usr/bin/python3 -c "import dkim" 2>/dev/null || missing="$missing python3-dkim"
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing="$missing libfaketime"
command -v gcc >/dev/null 2>&1 && [ -e /usr/include/dlfcn.h ] || missing="$missing gcc libc6-dev"
[ -x /usr/sbin/logrotate ] || missing="$missing logrotate"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v strace >/dev/null 2>&1 || missing="$missing strace"
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# Postfix is only a test peer: no system mail configuration.
echo 'postfix postfix/main_mailer_type select No configuration' | $SUDO debconf-set-selections
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends swaks libnet-ssleay-perl openssl curl python3 msmtp postfix ca-certificates fail2ban systemd systemd-journal-remote python3-systemd redis-server haproxy chromium python3-dkim libfaketime gcc libc6-dev logrotate prometheus strace >/dev/null
