#!/usr/bin/env bash
# Two emulated hosts on one machine: two network namespaces joined by a veth pair whose two ends are
# shaped with a token bucket filter (tc tbf), so traffic between them crosses a link of a chosen rate.
#
#   bench/two_hosts.sh up 100mbit          # create dtbench0 (10.77.0.1) and dtbench1 (10.77.0.2), shaped
#   bench/two_hosts.sh up none             # the same, unshaped (veth at memory speed)
#   bench/two_hosts.sh run dtbench1 -- ping -c 1 10.77.0.1      # a command inside one namespace (or: run 1 -- ...)
#   bench/two_hosts.sh status              # what exists now
#   bench/two_hosts.sh down                # remove both namespaces (and the veth pair with them)
#
# Needs root (ip netns, tc) and iproute2. `up` first removes whatever an earlier `up` left behind, and
# removes its own half-made setup if a step fails or it is interrupted. Each end shapes its egress, so each
# direction of the link carries at most RATE. tbf settings (override with the environment):
#   TBF_BURST    bucket size; default the bytes of 1 ms at RATE, at least 4000b (32kbit; "b" is bytes to tc). A bucket below
#                RATE / HZ cannot reach RATE on kernels with a coarse timer; a much larger one lets bursts through.
#   TBF_LATENCY  longest a packet may wait in the queue before it is dropped; default 50ms.
# bench/network_bench.py measures the rate achieved and prints it with its table.
set -eEuo pipefail

readonly NAMESPACES=(dtbench0 dtbench1)
readonly VETHS=(dtveth0 dtveth1)
readonly ADDRESSES=(10.77.0.1/24 10.77.0.2/24)

die() { echo "two_hosts: $*" >&2; exit 1; }

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

require_tools() {
    [[ $(id -u) -eq 0 ]] || die "needs root (ip netns and tc change the network configuration); run it with sudo"
    command -v ip >/dev/null && command -v tc >/dev/null || die "ip and tc not found; apt-get install iproute2"
}

# "100mbit" -> 100000000; bytes-per-second units ("12mbps") count 8 bits a byte, as tc reads them.
rate_bits() {
    local text=${1,,} number unit factor
    [[ $text =~ ^([0-9]+(\.[0-9]+)?)([a-z]*)$ ]] || die "cannot read rate '$1' (expected e.g. 100mbit, 1gbit, 12mbps)"
    number=${BASH_REMATCH[1]} unit=${BASH_REMATCH[3]}
    case $unit in
        ""|bit) factor=1 ;;  kbit) factor=1e3 ;;  mbit) factor=1e6 ;;  gbit) factor=1e9 ;;  tbit) factor=1e12 ;;
        bps) factor=8 ;;  kbps) factor=8e3 ;;  mbps) factor=8e6 ;;  gbps) factor=8e9 ;;  tbps) factor=8e12 ;;
        *) die "unknown rate unit '$unit' in '$1' (bit, kbit, mbit, gbit, or bps, kbps, mbps, gbps for bytes)" ;;
    esac
    awk -v number="$number" -v factor="$factor" 'BEGIN { printf "%.0f", number * factor }'
}

default_burst() {
    local bits
    bits=$(rate_bits "$1")
    awk -v bits="$bits" 'BEGIN { burst = bits / 8000; if (burst < 4000) burst = 4000; printf "%.0fb", burst }'
}

namespace_name() {  # accepts dtbench0, dtbench1, 0 or 1
    case $1 in
        0|"${NAMESPACES[0]}") echo "${NAMESPACES[0]}" ;;
        1|"${NAMESPACES[1]}") echo "${NAMESPACES[1]}" ;;
        *) die "unknown namespace '$1' (expected ${NAMESPACES[0]}, ${NAMESPACES[1]}, 0 or 1)" ;;
    esac
}

down() {
    local name
    for name in "${NAMESPACES[@]}"; do
        ip netns delete "$name" 2>/dev/null || true  # takes the veth end inside it along
    done
    ip link delete "${VETHS[0]}" 2>/dev/null || true  # left in the root namespace by an interrupted up
    ip link delete "${VETHS[1]}" 2>/dev/null || true
}

up() {
    local rate=$1 burst latency index
    if [[ $rate != none ]]; then
        rate_bits "$rate" >/dev/null  # a bad rate stops here, before anything is created
        burst=${TBF_BURST:-$(default_burst "$rate")}
        latency=${TBF_LATENCY:-50ms}
    fi
    down
    trap 'trap - ERR INT TERM; down; die "up failed; removed what it had made"' ERR
    trap 'trap - ERR INT TERM; down; die "interrupted; removed what up had made"' INT TERM
    ip link add "${VETHS[0]}" type veth peer name "${VETHS[1]}"
    for index in 0 1; do
        ip netns add "${NAMESPACES[index]}"
        ip link set "${VETHS[index]}" netns "${NAMESPACES[index]}"
        ip -n "${NAMESPACES[index]}" link set lo up
        ip -n "${NAMESPACES[index]}" address add "${ADDRESSES[index]}" dev "${VETHS[index]}"
        ip -n "${NAMESPACES[index]}" link set "${VETHS[index]}" up
        if [[ $rate != none ]]; then
            ip netns exec "${NAMESPACES[index]}" \
                tc qdisc replace dev "${VETHS[index]}" root tbf rate "$rate" burst "$burst" latency "$latency"
        fi
    done
    trap - ERR INT TERM
    if [[ $rate == none ]]; then
        echo "two_hosts: up, unshaped: ${NAMESPACES[0]} ${ADDRESSES[0]} <-> ${NAMESPACES[1]} ${ADDRESSES[1]}"
    else
        echo "two_hosts: up, tbf rate $rate burst $burst latency $latency on both ends:" \
             "${NAMESPACES[0]} ${ADDRESSES[0]} <-> ${NAMESPACES[1]} ${ADDRESSES[1]}"
    fi
}

status() {
    local name
    for name in "${NAMESPACES[@]}"; do
        if ip netns list | grep -w "$name" >/dev/null; then
            echo "== $name"
            ip -n "$name" -brief address show
            ip netns exec "$name" tc qdisc show
        else
            echo "== $name: absent"
        fi
    done
}

main() {
    [[ $# -ge 1 ]] || usage
    local command=$1
    shift
    case $command in
        up)
            [[ $# -eq 1 ]] || die "usage: two_hosts.sh up RATE  (e.g. 100mbit, or none for unshaped)"
            require_tools
            up "$1" ;;
        down)
            [[ $# -eq 0 ]] || die "usage: two_hosts.sh down"
            require_tools
            down ;;
        status)
            require_tools
            status ;;
        run)
            [[ $# -ge 3 && $2 == -- ]] || die "usage: two_hosts.sh run NAMESPACE -- COMMAND [ARGS...]"
            require_tools
            local name
            name=$(namespace_name "$1")
            shift 2
            ip netns list | grep -w "$name" >/dev/null || die "namespace $name does not exist; run 'two_hosts.sh up RATE' first"
            exec ip netns exec "$name" "$@" ;;
        -h|--help|help) usage ;;
        *) die "unknown command '$command' (up RATE, down, run NAMESPACE -- COMMAND, status)" ;;
    esac
}

main "$@"
