#!/bin/sh
# Installed as /usr/sbin/policy-rc.d in ddms-test/base: packages must never try to
# start services while an image is being built (there is no init in a container).
exit 101
