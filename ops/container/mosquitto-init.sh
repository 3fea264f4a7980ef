#!/bin/sh
# The `mosquitto-init` service of compose.yaml: runs to completion before every broker start,
# in the broker's own image (the official Alpine one or any with the same layout), as root.
#
# 1. Renders ops/mosquitto/mosquitto.conf (mounted at /ddms/mosquitto.conf) for the container
#    into /mosquitto/run/mosquitto.conf: the same listeners, limits and persistence, with
#    container paths, this image's dynamic-security plugin and logs on stderr (stdout is
#    block-buffered when it is not a terminal) — the rewrites the Ansible role's template
#    makes for a host.
# 2. Installs the TLS files from the secrets for the broker's user (Mosquitto 2 reads them after
#    dropping root), so the secret files themselves may stay readable by root only.
# 3. On the first start only (no dynamic-security store yet): creates the store with ddms'
#    admin account, then, on a temporary broker listening on loopback, ddms' ingest role and
#    account — the steps of ops/mosquitto/README.md "Accounts". Passwords come from the
#    secrets; changing them later is done with mosquitto_ctrl, not by this script.
set -eu

conf_src=/ddms/mosquitto.conf
run=/mosquitto/run
data=/mosquitto/data
secrets=/run/secrets
dynsec=$data/dynamic-security.json
admin=ddms-admin
ingester=ddms

say() { printf 'mosquitto-init: %s\n' "$*"; }
die() {
	printf 'mosquitto-init: error: %s\n' "$*" >&2
	exit 1
}

for secret in mqtt_dynsec_password mqtt_password mqtt_server_cert mqtt_server_key mqtt_ca; do
	[ -s "$secrets/$secret" ] || die "secret $secret is missing or empty ($secrets/$secret)"
done
[ -r "$conf_src" ] || die "$conf_src is missing (mount ops/mosquitto/mosquitto.conf there)"

plugin=
for candidate in /usr/lib/mosquitto_dynamic_security.so \
	/usr/lib/*/mosquitto_dynamic_security.so /usr/local/lib/mosquitto_dynamic_security.so; do
	if [ -f "$candidate" ]; then
		plugin=$candidate
		break
	fi
done
[ -n "$plugin" ] || die "this image has no mosquitto_dynamic_security.so"

# 1 + 2. Configuration and TLS files, rewritten on every start (certificate rotation = replace
# the files, restart the stack).
mkdir -p "$run/certs" "$data"
cp "$secrets/mqtt_server_cert" "$run/certs/server.crt"
cp "$secrets/mqtt_server_key" "$run/certs/server.key"
cp "$secrets/mqtt_ca" "$run/certs/ca.crt"
chown -R mosquitto:mosquitto "$run/certs" "$data"
chmod 0750 "$run/certs"
chmod 0644 "$run/certs/server.crt" "$run/certs/ca.crt"
chmod 0600 "$run/certs/server.key"
sed -e "s|^certfile .*|certfile $run/certs/server.crt|" \
	-e "s|^keyfile .*|keyfile $run/certs/server.key|" \
	-e "s|^cafile .*|cafile $run/certs/ca.crt|" \
	-e "s|^plugin .*|plugin $plugin|" \
	-e "s|^plugin_opt_config_file .*|plugin_opt_config_file $dynsec|" \
	-e "s|^persistence_location .*|persistence_location $data/|" \
	-e "s|^log_dest .*|log_dest stderr|" \
	"$conf_src" >"$run/mosquitto.conf.new"
for key in certfile keyfile cafile plugin plugin_opt_config_file persistence_location log_dest; do
	grep -q "^$key " "$run/mosquitto.conf.new" || die "$conf_src has no \`$key\` line to rewrite"
done
chmod 0644 "$run/mosquitto.conf.new"
mv "$run/mosquitto.conf.new" "$run/mosquitto.conf"
say "wrote $run/mosquitto.conf (plugin $plugin)"

# 3. Accounts, once.
if [ -s "$dynsec" ]; then
	say "dynamic-security store exists; accounts unchanged"
	exit 0
fi
admin_password=$(cat "$secrets/mqtt_dynsec_password")
ingester_password=$(cat "$secrets/mqtt_password")
store=$dynsec.init
rm -f "$store"
mosquitto_ctrl dynsec init "$store" "$admin" "$admin_password" >/dev/null
chown mosquitto:mosquitto "$store"
chmod 0600 "$store"

boot_conf=/tmp/mosquitto-init.conf
cat >"$boot_conf" <<EOF
listener 1883 127.0.0.1
allow_anonymous false
persistence false
plugin $plugin
plugin_opt_config_file $store
log_dest stderr
EOF
mosquitto -c "$boot_conf" &
broker=$!
trap 'kill "$broker" 2>/dev/null || true' EXIT

ctrl() {
	mosquitto_ctrl -h 127.0.0.1 -p 1883 -u "$admin" -P "$admin_password" dynsec "$@" >/dev/null
}
tries=0
until ctrl getClient "$admin" 2>/dev/null; do
	tries=$((tries + 1))
	[ "$tries" -lt 30 ] || die "the temporary broker did not answer within 30 s"
	kill -0 "$broker" 2>/dev/null || die "the temporary broker exited"
	sleep 1
done
ctrl createRole ddms-ingester
ctrl addRoleACL ddms-ingester subscribePattern 'devices/#' allow
ctrl addRoleACL ddms-ingester subscribePattern '$share/ddms/devices/#' allow
ctrl addRoleACL ddms-ingester publishClientReceive 'devices/#' allow
ctrl createClient "$ingester" -p "$ingester_password"
ctrl addClientRole "$ingester" ddms-ingester
kill "$broker"
wait "$broker" || true
trap - EXIT
mv "$store" "$dynsec"
say "created the dynamic-security store with accounts $admin and $ingester"
