#!/bin/sh
# Entrypoint of ddms-test/postgres:15 (written for ddms; not the official image's script).
#
# Reproduces the parts of the official `postgres` image's behaviour that the ddms test
# harness relies on:
#   * POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), POSTGRES_USER (default postgres),
#     POSTGRES_DB (default: $POSTGRES_USER), POSTGRES_INITDB_ARGS,
#     POSTGRES_HOST_AUTH_METHOD (default scram-sha-256);
#   * the cluster lives in $PGDATA (/var/lib/postgresql/data) and is created on first start;
#   * the server listens on all addresses and requires a password from the network;
#   * the server runs as the `postgres` user, never as root;
#   * arguments are passed to the server: `postgres -c fsync=off`, or just `-c fsync=off`;
#     `postgres --version` and the like print and exit without creating a cluster;
#     any other command (`bash`, `psql ...`) is run as given;
#   * *.sql and *.sh files in /docker-entrypoint-initdb.d run once, after the cluster is created;
#   * during first-start initialisation a temporary server (socket only) reports
#     "database system is ready to accept connections" on stdout; the real server then
#     reports it on stderr, as the official image does.
set -eu

SELF=/usr/local/bin/docker-entrypoint.sh

say() {
	printf 'ddms-postgres: %s\n' "$*"
}

die() {
	printf 'ddms-postgres: error: %s\n' "$*" >&2
	exit 1
}

# Runs SQL from stdin against the temporary server.
run_sql() {
	psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" "$@"
}

init_cluster() {
	POSTGRES_USER=${POSTGRES_USER:-postgres}
	POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
	if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
		POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
	fi
	POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-}
	auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

	if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
		die "the database is not initialised and POSTGRES_PASSWORD is empty; set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust to allow connections without one)"
	fi

	say "creating the cluster in $PGDATA (superuser \"$POSTGRES_USER\", host auth $auth)"
	pwfile=
	if [ -n "$POSTGRES_PASSWORD" ]; then
		pwfile=$(mktemp)
		printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	fi
	# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words on purpose.
	if ! initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" ${pwfile:+--pwfile="$pwfile"} \
		--auth-local=trust --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-}; then
		[ -z "$pwfile" ] || rm -f "$pwfile"
		die "initdb failed"
	fi
	[ -z "$pwfile" ] || rm -f "$pwfile"

	{
		printf '\n# Added by the ddms-test entrypoint: accept connections from the network.\n'
		printf "listen_addresses = '*'\n"
	} >>"$PGDATA/postgresql.conf"
	{
		printf '\n# Added by the ddms-test entrypoint: password auth from any address.\n'
		printf 'host all all all %s\n' "$auth"
	} >>"$PGDATA/pg_hba.conf"

	# Temporary server, reachable only through the Unix socket, for database creation and
	# init scripts. Without -l, pg_ctl leaves the server's log on stdout.
	pg_ctl --pgdata="$PGDATA" --wait --options="-c listen_addresses='' -p 5432" start

	if [ "$POSTGRES_DB" != postgres ]; then
		say "creating database \"$POSTGRES_DB\""
		run_sql --dbname postgres --set db="$POSTGRES_DB" <<-'SQL'
			CREATE DATABASE :"db";
		SQL
	fi

	for f in /docker-entrypoint-initdb.d/*; do
		[ -f "$f" ] || continue
		case "$f" in
		*.sh)
			say "running $f"
			if [ -x "$f" ]; then
				PGUSER=$POSTGRES_USER PGDATABASE=$POSTGRES_DB "$f"
			else
				PGUSER=$POSTGRES_USER PGDATABASE=$POSTGRES_DB sh "$f"
			fi
			;;
		*.sql)
			say "running $f"
			run_sql --dbname "$POSTGRES_DB" -f "$f"
			;;
		*)
			say "ignoring $f"
			;;
		esac
	done

	pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop
	say "initialisation complete; starting the server"
}

# Whether the server is only asked to print something (`postgres --version`, `-C name`).
wants_info() {
	for arg; do
		case "$arg" in
		-'?' | --help | --describe-config | -V | --version | -C | -C*) return 0 ;;
		esac
	done
	return 1
}

# `docker run IMAGE -c fsync=off` means `postgres -c fsync=off`.
if [ "$#" -eq 0 ]; then
	set -- postgres
fi
case "$1" in
-*) set -- postgres "$@" ;;
esac

# Anything but the server is run as it is (e.g. `docker run -it IMAGE bash`).
if [ "$1" != postgres ]; then
	exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
	# Make the data directory (possibly a fresh volume) and socket directory usable by
	# `postgres`, then run this script again as that user.
	mkdir -p "$PGDATA" /var/run/postgresql
	find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
	chmod 700 "$PGDATA"
	chown postgres:postgres /var/run/postgresql
	chmod 3777 /var/run/postgresql
	HOME=/var/lib/postgresql
	export HOME
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$SELF" "$@"
fi

if wants_info "$@"; then
	exec "$@"
elif [ ! -s "$PGDATA/PG_VERSION" ]; then
	init_cluster
else
	say "found an existing cluster in $PGDATA; skipping initialisation"
fi

exec "$@"
