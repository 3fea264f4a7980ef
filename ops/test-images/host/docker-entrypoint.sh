#!/bin/sh
# Entry point of ddms-test/host: host keys made fresh for this container, the test's public
# key authorized for root, then the command (sshd in the foreground by default).
set -eu
ssh-keygen -A >/dev/null
if [ -n "${DDMS_TEST_SSH_PUBKEY:-}" ]; then
    install -d -m 0700 /root/.ssh
    printf '%s\n' "$DDMS_TEST_SSH_PUBKEY" > /root/.ssh/authorized_keys
    chmod 0600 /root/.ssh/authorized_keys
else
    echo "docker-entrypoint: DDMS_TEST_SSH_PUBKEY is empty: nobody can log in" >&2
fi
mkdir -p /run/sshd
exec "$@"
