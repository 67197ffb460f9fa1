#!/usr/bin/env bash
# deploy/build-offline.sh — build deploy/Dockerfile where no image registry is
# reachable (only Debian's package archive, crates.io and npm's registry).
#
# deploy/Dockerfile starts from two registry images, rust:1-bookworm and
# node:20-bookworm-slim. This script makes stand-ins for both from Debian's
# packages and this host's own toolchains, then builds the Dockerfile
# unchanged with `--build-arg RUST_IMAGE=... --build-arg NODE_IMAGE=...`:
#
#   herd-offline/debian:bookworm  debootstrap --variant=minbase, imported with
#                                 `docker import`, then upgraded from
#                                 bookworm-updates and bookworm-security, with
#                                 ca-certificates and the host's local CAs
#                                 (/usr/local/share/ca-certificates: a TLS proxy
#                                 between this host and the registries)
#   herd-offline/rust:bookworm    + gcc, libc6-dev (apt) and
#                                 the host's Rust toolchain (rustc, cargo,
#                                 rustdoc and their libraries: the sysroot of
#                                 `rustc`, without its docs) in /usr/local/rust.
#                                 Bookworm's own rustc (1.63) is older than
#                                 herd's rust-version.
#   herd-offline/node:bookworm    + the host's `node` binary and npm, a `node`
#                                 user with uid 1000 (as in the node images)
#
# The build stage then compiles herd inside the container as it would on
# rust:1-bookworm (crates come from crates.io; a BuildKit cache mount keeps
# them and the target dir between builds), and `npm ci` fetches the example
# app's packages from npm's registry.
#
# Usage: deploy/build-offline.sh [--target run|daemon] [--tag NAME] [--rebuild-bases]
#
#   --target         the Dockerfile's target (default: daemon)
#   --tag            the image's name (default: herd-apps for daemon, herd-hello for run)
#   --rebuild-bases  make the three base images anew even when they exist
#                    (after a toolchain or node upgrade on the host)
#
# Environment: DOCKER (the docker client; by default the first `docker` on
# PATH that can build with BuildKit), DEBIAN_MIRROR (default
# http://deb.debian.org/debian), TMPDIR (where the debootstrap tree and the
# build contexts are made; they are removed at exit).
#
# Needs: root (debootstrap), debootstrap, a running Docker engine, rustc and
# cargo (>= the workspace's rust-version) and node + npm on the host.
set -euo pipefail

readonly SUITE=bookworm
readonly DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
readonly DEBIAN_IMAGE=herd-offline/debian:$SUITE
readonly RUST_IMAGE=herd-offline/rust:$SUITE
readonly NODE_IMAGE=herd-offline/node:$SUITE

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=daemon
tag=
rebuild_bases=false

die() {
	echo "build-offline: $*" >&2
	exit 1
}

while (($#)); do
	case $1 in
	--target) target=${2:?--target needs run or daemon}; shift 2 ;;
	--tag) tag=${2:?--tag needs a name}; shift 2 ;;
	--rebuild-bases) rebuild_bases=true; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done
case $target in
run) tag=${tag:-herd-hello} ;;
daemon) tag=${tag:-herd-apps} ;;
*) die "--target must be run or daemon, not '$target'" ;;
esac

# The docker client. Docker's own CLI from 23 on builds with BuildKit only
# through the buildx plugin; older clients (Debian bookworm's docker.io is
# 20.10) have BuildKit built in and use it with DOCKER_BUILDKIT=1.
pick_docker() {
	if [[ -n ${DOCKER:-} ]]; then
		echo "$DOCKER"
		return
	fi
	local client version
	while read -r client; do
		if "$client" buildx version >/dev/null 2>&1; then
			echo "$client"
			return
		fi
		version=$("$client" version --format '{{.Client.Version}}' 2>/dev/null || true)
		if [[ $version =~ ^([0-9]+)\. ]] && ((BASH_REMATCH[1] < 23)); then
			echo "$client"
			return
		fi
	done < <(type -ap docker)
	die "no docker client here can build with BuildKit: install the buildx plugin, or Debian's docker.io (its 20.10 client has BuildKit built in), or set DOCKER"
}
DOCKER=$(pick_docker)
export DOCKER_BUILDKIT=1
"$DOCKER" info >/dev/null 2>&1 ||
	die "the Docker engine does not answer ($DOCKER info failed): start it (systemctl start docker, or dockerd &)"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/herd-offline.XXXXXX")
cleanup() { rm -rf --one-file-system "$work"; }
trap cleanup EXIT

have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

step() { printf '\n== %s\n' "$*" >&2; }

# --- herd-offline/debian: debootstrap, import, security updates ------------
make_debian() {
	command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
	((EUID == 0)) || die "debootstrap needs root"
	step "debootstrap $SUITE (minbase) from $DEBIAN_MIRROR"
	local rootfs=$work/rootfs
	debootstrap --variant=minbase "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
		{ tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
	# The host's name and resolver are the engine's to provide; the package
	# cache and lists only make the image bigger.
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
		"$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
	tar --numeric-owner -C "$rootfs" -c . |
		"$DOCKER" import --change 'CMD ["bash"]' - herd-offline/debootstrap:$SUITE >/dev/null
	rm -rf --one-file-system "$rootfs"
	# The build reaches crates.io and npm's registry through this host's
	# network: if that network's TLS goes through a proxy whose CA the host
	# trusts (a certificate in /usr/local/share/ca-certificates), the images
	# must trust it too.
	local ca=$work/ca
	mkdir -p "$ca"
	if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
		cp /usr/local/share/ca-certificates/*.crt "$ca/"
		echo "build-offline: the host's local CA certificates go into the base images:" \
			/usr/local/share/ca-certificates/*.crt >&2
	fi
	step "$DEBIAN_IMAGE: + bookworm-updates, bookworm-security, ca-certificates"
	"$DOCKER" build -q -t "$DEBIAN_IMAGE" -f - "$work" <<EOF >/dev/null
FROM herd-offline/debootstrap:$SUITE
COPY ca/ /usr/local/share/ca-certificates/
RUN printf '%s\n' \
      'deb $DEBIAN_MIRROR $SUITE main' \
      'deb $DEBIAN_MIRROR $SUITE-updates main' \
      'deb ${DEBIAN_MIRROR%/debian}/debian-security $SUITE-security main' \
      > /etc/apt/sources.list \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get -y upgrade \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
CMD ["bash"]
EOF
	"$DOCKER" rmi herd-offline/debootstrap:$SUITE >/dev/null
}

# --- herd-offline/rust: gcc + the host's Rust toolchain ---------------------
make_rust() {
	command -v rustc >/dev/null || die "rustc is missing on the host"
	local sysroot version wanted
	sysroot=$(cd "$repo" && rustc --print sysroot)
	version=$(cd "$repo" && rustc --version | awk '{print $2}')
	wanted=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
	if [[ -n $wanted ]] && [[ $(printf '%s\n%s\n' "$wanted" "${version%%-*}" | sort -V | head -1) != "$wanted" ]]; then
		die "the host's rustc is $version; herd needs $wanted or later"
	fi
	[[ -x $sysroot/bin/cargo ]] || die "no cargo in $sysroot/bin (install the toolchain's cargo component)"
	step "$RUST_IMAGE: + gcc, libc6-dev and the host's Rust $version ($sysroot)"
	# The toolchain without its documentation (share/, about 800 MB), rustfmt,
	# clippy or the debugger scripts: what `cargo build` needs.
	local ctx=$work/rust
	mkdir -p "$ctx/bin"
	cp -a "$sysroot"/bin/{cargo,rustc,rustdoc} "$ctx/bin/"
	cp -a "$sysroot/lib" "$ctx/lib"
	if [[ -d $sysroot/libexec ]]; then
		cp -a "$sysroot/libexec" "$ctx/libexec"
	else
		mkdir "$ctx/libexec"
	fi
	"$DOCKER" build -q -t "$RUST_IMAGE" --label "org.opencontainers.image.description=bookworm (debootstrap) + host Rust $version" \
		-f - "$ctx" <<EOF >/dev/null
FROM $DEBIAN_IMAGE
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY bin/ /usr/local/rust/bin/
COPY lib/ /usr/local/rust/lib/
COPY libexec/ /usr/local/rust/libexec/
# As in the rust images: CARGO_HOME is /usr/local/cargo.
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && rustc --version && cargo --version
EOF
}

# --- herd-offline/node: the host's node and npm, a `node` user --------------
make_node() {
	command -v node >/dev/null || die "node is missing on the host"
	command -v npm >/dev/null || die "npm is missing on the host"
	local node npm_dir version
	node=$(readlink -f "$(command -v node)")
	npm_dir=$(readlink -f "$(dirname "$(readlink -f "$(command -v npm)")")/..")
	[[ -f $npm_dir/bin/npm-cli.js ]] || die "cannot find npm's package next to $(command -v npm)"
	version=$(node --version)
	step "$NODE_IMAGE: + the host's node $version ($node) and npm $(npm --version)"
	local ctx=$work/node
	mkdir -p "$ctx"
	cp -a "$node" "$ctx/node"
	cp -a "$npm_dir" "$ctx/npm"
	"$DOCKER" build -q -t "$NODE_IMAGE" --label "org.opencontainers.image.description=bookworm (debootstrap) + host node $version" \
		-f - "$ctx" <<EOF >/dev/null
FROM $DEBIAN_IMAGE
# The node images' user: uid and gid 1000, home /home/node.
RUN groupadd --gid 1000 node \
 && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
COPY node /usr/local/bin/node
COPY npm/ /usr/local/lib/node_modules/npm/
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && npm --version
# Node reads its own CA list; the system's has the local ones added above.
ENV NODE_VERSION=${version#v} NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]
EOF
}

if $rebuild_bases; then
	"$DOCKER" rmi "$NODE_IMAGE" "$RUST_IMAGE" "$DEBIAN_IMAGE" >/dev/null 2>&1 || true
fi
made_base=false
if ! have_image "$DEBIAN_IMAGE"; then
	make_debian
	made_base=true
fi
if ! have_image "$RUST_IMAGE"; then
	make_rust
	made_base=true
fi
if ! have_image "$NODE_IMAGE"; then
	make_node
	made_base=true
fi
# The bases' build contexts (the toolchain: 600 MB) stay in the engine's
# build cache otherwise; they are sent anew whenever a base is made.
if $made_base; then
	"$DOCKER" builder prune -f --filter type=source.local >/dev/null
fi

step "$tag: deploy/Dockerfile, target $target"
"$DOCKER" build -f "$repo/deploy/Dockerfile" --target "$target" -t "$tag" \
	--build-arg RUST_IMAGE="$RUST_IMAGE" --build-arg NODE_IMAGE="$NODE_IMAGE" "$repo"
