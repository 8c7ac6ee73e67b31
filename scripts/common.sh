# scripts/common.sh - shared by scripts/demo and scripts/test: installs
# what is missing from Debian 12 and builds the tree idempotently.
# Sourced, not run.

top=$(cd "$(dirname "$0")/.." && pwd)

# Build tools and libraries, the real peers the tests and the demo start,
# and curl for the commands the demo prints with --keep.
CUTOVER_PACKAGES="gcc make autoconf automake pkg-config perl \
libevent-dev libhiredis-dev libmongoc-dev libjsmn-dev libcmocka-dev \
libconfuse-dev libhttp-parser-dev \
redis-server redis-tools python3 python3-redis python3-mockupdb python3-pymongo \
util-linux curl"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Installs missing Debian packages when root; otherwise prints the exact
# command and stops.
ensure_packages() {
	missing=""
	for pkg in $CUTOVER_PACKAGES; do
		status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)
		[ "$status" = "install ok installed" ] || missing="$missing $pkg"
	done
	[ -z "$missing" ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing Debian packages; install them with:" >&2
		echo "  sudo apt-get install -y$missing" >&2
		exit 1
	fi
	say "installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends $missing
}

# build_tree DIR CONFIGURE-ARGS...: autoreconf when needed, configure DIR
# when its arguments changed, then make. Safe to run again and again.
build_tree() {
	dir=$1
	shift
	if [ ! -x "$top/configure" ] || [ "$top/configure.ac" -nt "$top/configure" ] ||
		[ "$top/Makefile.am" -nt "$top/Makefile.in" ]; then
		say "autoreconf"
		(cd "$top" && autoreconf -fi)
	fi
	mkdir -p "$dir"
	want="$*"
	if [ ! -f "$dir/Makefile" ] || [ "$(cat "$dir/.configure-args" 2>/dev/null)" != "$want" ]; then
		say "configure $want"
		(cd "$dir" && "$top/configure" -q "$@") || exit 1
		echo "$want" >"$dir/.configure-args"
	fi
	say "make ($dir)"
	make -s -C "$dir" -j"$(nproc)" || exit 1
}

# A TCP port nobody listens on right now.
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
