#!/usr/bin/env bash
# services.sh prepares Postgres, Redis and NATS (with JetStream) for
# writethrough on this machine.
#
#   deploy/services.sh run    services at DATABASE_URL, REDIS_URL, NATS_URL
#                             (for `make run`)
#   deploy/services.sh test   services at WT_TEST_DATABASE_URL,
#                             WT_TEST_REDIS_URL, WT_TEST_NATS_URL (for `make test`)
#
# Each service that does not answer at its URL is started: with
# `docker compose up -d <service>` when a Docker engine answers, else with the
# locally installed server. Only services on this machine (127.0.0.1,
# localhost, ::1) are started; a remote one must already answer. Then the
# database named in the Postgres URL is created when missing.
#
# On failure it prints one line naming what is missing and exits 1. It never
# stops a service.
set -euo pipefail

mode=${1:-run}
case $mode in
run)
	pg_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/writethrough?sslmode=disable}
	redis_url=${REDIS_URL:-redis://127.0.0.1:6379/0}
	nats_url=${NATS_URL:-nats://127.0.0.1:4222}
	pg_var=DATABASE_URL redis_var=REDIS_URL nats_var=NATS_URL
	;;
test)
	pg_url=${WT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
	redis_url=${WT_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
	nats_url=${WT_TEST_NATS_URL:-nats://127.0.0.1:4222}
	pg_var=WT_TEST_DATABASE_URL redis_var=WT_TEST_REDIS_URL nats_var=WT_TEST_NATS_URL
	;;
*)
	echo "usage: deploy/services.sh run|test" >&2
	exit 2
	;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wait_seconds=${WT_SERVICES_WAIT:-30}

die() {
	echo "services: $*" >&2
	exit 1
}

# hostport URL DEFAULT_PORT prints "host port" of a URL (user info, path and
# query dropped; [::1] unbracketed).
hostport() {
	local rest=${1#*://}
	rest=${rest%%/*}
	rest=${rest%%\?*}
	rest=${rest##*@}
	local host port=$2
	if [[ $rest == \[*\]* ]]; then
		host=${rest%%]*}
		host=${host#[}
		[[ $rest == *]:* ]] && port=${rest##*]:}
	elif [[ $rest == *:* ]]; then
		host=${rest%%:*}
		port=${rest##*:}
	else
		host=$rest
	fi
	echo "${host:-127.0.0.1} $port"
}

is_local() {
	case $1 in 127.* | localhost | ::1) return 0 ;; esac
	return 1
}

tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# URL of the same Postgres server, database "postgres".
pg_admin_url() {
	local url=$1 query=
	[[ $url == *\?* ]] && query="?${url#*\?}"
	local base=${url%%\?*}
	local scheme=${base%%://*} rest=${base#*://}
	echo "$scheme://${rest%%/*}/postgres$query"
}

pg_dbname() {
	local base=${1%%\?*}
	local rest=${base#*://}
	[[ $rest == */* ]] && rest=${rest#*/} || rest=
	echo "${rest:-postgres}"
}

pg_up() { pg_isready -q -t 2 -d "$(pg_admin_url "$pg_url")" >/dev/null 2>&1; }
redis_up() { [[ $(timeout 3 redis-cli -u "$redis_url" ping 2>/dev/null) == PONG ]]; }
nats_up() {
	local host port
	read -r host port <<<"$(hostport "$nats_url" 4222)"
	tcp_open "$host" "$port"
}

docker_engine() {
	command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

wait_for() { # check name
	local i
	for ((i = 0; i < wait_seconds * 4; i++)); do
		"$1" && return 0
		sleep 0.25
	done
	return 1
}

# launch service command...: runs a start command; on failure, one line with
# the last thing it said.
launch() {
	local svc=$1 out
	shift
	out=$("$@" 2>&1) || die "could not start $svc ($1): $(tail -n 1 <<<"$out")"
}

start_local() { # service
	case $1 in
	postgres)
		if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ -z $(ls /etc/postgresql 2>/dev/null) ]]; then
			die "Postgres is not running at \$$pg_var and no local server is installed: install it (apt-get install postgresql) or start Postgres there"
		fi
		# shellcheck disable=SC2012 # the entries are version numbers
		launch postgres pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
		;;
	redis)
		command -v redis-server >/dev/null 2>&1 ||
			die "redis-server not found: install it (apt-get install redis-server) or start Redis at \$$redis_var"
		mkdir -p /var/lib/redis /var/log/redis
		launch redis redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
		;;
	nats)
		[[ -x /usr/sbin/nats-server ]] ||
			die "nats-server not found: install it (apt-get install nats-server) or start NATS with JetStream at \$$nats_var"
		mkdir -p /var/lib/nats-server
		launch nats start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
		;;
	esac
}

# ensure service check var url port: start the service if it does not
# answer. port is the one the service is started on.
ensure() {
	local svc=$1 check=$2 var=$3 url=$4 want=$5 host port
	"$check" && return 0
	read -r host port <<<"$(hostport "$url" "$want")"
	is_local "$host" || die "$svc does not answer at \$$var (host $host): start it there or point \$$var at a running server"
	[[ $port == "$want" ]] || die "$svc does not answer at \$$var (port $port), and it can be started here only on port $want: start it yourself or use port $want"
	if docker_engine; then
		(cd "$root" && docker compose up -d "$svc" >/dev/null 2>&1) ||
			die "docker compose up -d $svc failed: run it yourself to see why, or start $svc at \$$var"
	else
		start_local "$svc"
	fi
	wait_for "$check" || die "$svc was started but does not answer at \$$var within ${wait_seconds}s: see its log"
	echo "services: started $svc"
}

if ! command -v pg_isready >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
	die "psql and pg_isready not found: install the Postgres client (apt-get install postgresql-client)"
fi
command -v redis-cli >/dev/null 2>&1 ||
	die "redis-cli not found: install it (apt-get install redis-tools)"

ensure postgres pg_up "$pg_var" "$pg_url" 5432
ensure redis redis_up "$redis_var" "$redis_url" 6379
ensure nats nats_up "$nats_var" "$nats_url" 4222

db=$(pg_dbname "$pg_url")
admin=$(pg_admin_url "$pg_url")
exists=$(psql "$admin" -X -tA -v ON_ERROR_STOP=1 -v db="$db" 2>/dev/null <<<"SELECT 1 FROM pg_database WHERE datname = :'db'") ||
	die "cannot query Postgres at \$$pg_var: check the URL and its credentials"
if [[ $exists != 1 ]]; then
	psql "$admin" -X -q -v ON_ERROR_STOP=1 -v db="$db" >/dev/null 2>&1 <<<'CREATE DATABASE :"db"' ||
		die "cannot create database $db at \$$pg_var: create it, or grant CREATEDB to the user"
	echo "services: created database $db"
fi
echo "services: Postgres, Redis and NATS are ready"
