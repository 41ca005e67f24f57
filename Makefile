# The two commands of the README: `make run` and `make test`. Both set everything up first, and
# every step is safe to repeat.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
MODE := $(if $(filter-out 0,$(FASTPATH_DEBUG)),debug,release)
BUILT := fastpath/_core/.built-$(MODE)
CORE_SOURCES := $(wildcard fastpath/_core/*.pyx fastpath/_core/*.pxd fastpath/_core/*.h) setup.py

.PHONY: run test test-suite bench-check bench-check-packets bench-check-iops bench-baseline \
	build peers guest lint clean

# The packet benchmark, fastpath against DPDK's vhost PMD at every size, each figure with its
# bottleneck (generator within 10 % of what the traffic process sends alone, else back-end),
# then the IOPS benchmark, the null bdev against fio's null engine on one core (a few minutes
# in all).
run: build peers
	mkdir -p build
	$(VENV)/bin/fastpath bench pvp --peer dpdk --json build/pvp.json --plot build/pvp.png
	$(VENV)/bin/fastpath bench iops --bdev null:1G --workload randread --qd 32 --peer fio \
		--json build/iops.json --plot build/iops.png
	@echo "reports: packets build/pvp.json build/pvp.png; IOPS build/iops.json build/iops.png"

test: build peers guest
	$(MAKE) --no-print-directory test-suite
	$(MAKE) --no-print-directory FASTPATH_DEBUG=1 test-suite

# The whole suite against the current build mode (FASTPATH_DEBUG=1: bounds checks on). Here a
# real peer that is missing fails its tests instead of skipping them (tests/conftest.py).
test-suite: build
	FASTPATH_REQUIRE_PEERS=1 $(PY) -m pytest -q

build: $(BUILT)

# The throughput regression gate: `fastpath bench vhost-net` with DPDK testpmd's virtio-user as
# the traffic, so that the back-end is the bottleneck, in both directions (rx: testpmd txonly
# into vhost-net --fwd drop; loop: testpmd flowgen into vhost-net --fwd io and back) at
# BENCH_SIZES. The back-end of BENCH_TREE (this working tree) runs against the back-end of
# BASELINE, a revision exported to BASELINE_DIR and built there; each runs from its own
# checkout alone, and the benchmark checks each process's start-up line and memory map for it.
# BASELINE is the revision in bench/baseline-revision: the figures last accepted, moved forward
# when a landing's figures are accepted, so that a slip spread over several commits adds up
# against it. Each size and direction gets BENCH_PAIRS pairs of runs back to back, their order
# alternating, and fails if the median ratio tree/baseline of its pairs' rates (frames per
# second in which both sides ran) is below BENCH_FLOOR.
# The floor is from this machine (2 shared cores, another developer's test suite busy-polling
# on both, load average 3.5 to 5), 5 pairs of 3 s runs a size and direction:
# - identical trees against each other, twice: medians 0.873, 1.074, 1.037, 0.879 and 1.253,
#   1.005, 1.037, 1.007 (rx 64, rx 1518, loop 64, loop 1518); single pairs 0.51 to 1.70; the
#   lowest median of any 3 of the 5 pairs 0.838;
# - a tree slowed on purpose (a thread spinning on the back-end's CPU 4 ms of every 5): medians
#   0.512, 0.456, 0.546, 0.535; no pair above 0.61; slowed as tests/test_bench_gate.py now
#   slows it (its poll host spins after each kernel call as long as the call took), rx 64 on a
#   quiet machine: 0.521 (pairs 0.45 to 0.65), the identical tree 0.936 (0.70 to 1.08).
# 0.8 passes every identical median and fails every slowed one; a regression of less than about
# 20 % is not told from that load's noise (on an idle machine the pairs are far closer).
BASELINE ?= $(shell cat bench/baseline-revision)
BASELINE_DIR ?= build/baseline
BENCH_TREE ?= $(CURDIR)
BENCH_FLOOR ?= 0.8
BENCH_SIZES ?= 64,1518
BENCH_DIRECTIONS ?= rx,loop
BENCH_PAIRS ?= 5
BENCH_SECONDS ?= 3
BENCH_JSON ?= build/bench-check.json
bench-check: bench-check-packets bench-check-iops

bench-check-packets: build bench-baseline
	mkdir -p $(dir $(BENCH_JSON))
	$(VENV)/bin/fastpath bench vhost-net --tree $(BENCH_TREE) --baseline $(BASELINE_DIR) \
		--fail-below $(BENCH_FLOOR) --sizes $(BENCH_SIZES) --directions $(BENCH_DIRECTIONS) \
		--pairs $(BENCH_PAIRS) --seconds $(BENCH_SECONDS) --json $(BENCH_JSON)

# The IOPS leg: `fastpath bench iops --baseline`, the null bdev's 4 KiB random reads at QD 32
# from an IoJob on one CPU, each side's whole process on that CPU, IOPS_PAIRS pairs of
# IOPS_SECONDS runs alternated, failing if the median ratio tree/baseline is below IOPS_FLOOR.
# A baseline from before the IOPS benchmark existed cannot run it: then the leg says so and
# passes, until bench/baseline-revision moves past it. The floor, from this machine (quiet, 5
# pairs, 15 to 22 M IOPS a run): identical trees 0.987 (pairs 0.87 to 1.05) and 1.000 (0.90 to
# 1.17); the tree slowed as tests/test_bench_gate.py slows it (half its time spinning) 0.518
# (0.48 to 0.61). 0.8, as for packets, passes the first and fails the second with room.
IOPS_FLOOR ?= 0.8
IOPS_PAIRS ?= 5
IOPS_SECONDS ?= 2
IOPS_JSON ?= build/bench-check-iops.json
bench-check-iops: build bench-baseline
	mkdir -p $(dir $(IOPS_JSON))
	@if [ -f $(BASELINE_DIR)/fastpath/bench/iops.py ]; then \
		$(VENV)/bin/fastpath bench iops --tree $(BENCH_TREE) --baseline $(BASELINE_DIR) \
			--bdev null:1G --workload randread --qd 32 --time $(IOPS_SECONDS) \
			--pairs $(IOPS_PAIRS) --fail-below $(IOPS_FLOOR) --json $(IOPS_JSON); \
	else \
		echo "bench-check: the baseline $(BASELINE) has no IOPS benchmark; IOPS is gated" \
			"once bench/baseline-revision moves past it"; \
	fi

# BASELINE exported to BASELINE_DIR and built there, unless it already is.
bench-baseline:
	@rev=$$(git rev-parse --verify --quiet '$(BASELINE)^{commit}') || \
		{ echo "bench-check: no revision $(BASELINE) in this clone" >&2; exit 2; }; \
	if [ "$$(cat $(BASELINE_DIR)/.revision 2>/dev/null)" != "$$rev" ]; then \
		echo "bench-check: exporting and building $$rev in $(BASELINE_DIR)"; \
		rm -rf $(BASELINE_DIR) && mkdir -p $(BASELINE_DIR) && \
		git archive --format=tar $$rev | tar -x -C $(BASELINE_DIR) && \
		(cd $(BASELINE_DIR) && FASTPATH_DEBUG=0 $(abspath $(PY)) setup.py -q build_ext --inplace) && \
		echo $$rev > $(BASELINE_DIR)/.revision || exit 2; \
	fi

# The real peers of the interoperability tests and benchmarks, from Debian's packages (see the
# shared peers notes): DPDK's testpmd with its vhost and virtio-user PMDs, QEMU with busybox
# for the Linux guest that tests/integration/guest/build.py puts together, and for block I/O
# fio and qemu-storage-daemon.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
TESTPMD := /usr/bin/dpdk-testpmd
QEMU := /usr/bin/qemu-system-x86_64
BUSYBOX := /bin/busybox
FIO := /usr/bin/fio
QSD := /usr/bin/qemu-storage-daemon
PEER_BINARIES := $(TESTPMD) $(QEMU) $(BUSYBOX) $(FIO) $(QSD)

peers: $(PEER_BINARIES)

# One apt run for all of them (a grouped target).
$(PEER_BINARIES) &:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
		dpdk dpdk-dev qemu-system-x86 qemu-system-common busybox-static fio

# What the compiled core links besides libc, from Debian's packages too: liburing for
# fastpath._core.uring (setup.py's LIBRARIES). Apart from the peers, so that `make build` needs
# no DPDK or QEMU; `make test` then runs apt twice on a fresh machine, and never again.
BUILD_DEPENDENCIES := /usr/include/liburing.h

$(BUILD_DEPENDENCIES) &:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
		liburing-dev

# The guest kernel and initramfs (cached under build/guest; the tests build it on demand too).
guest: peers $(INSTALLED)
	$(PY) tests/integration/guest/build.py

# The editable install builds the core too, so it needs the core's libraries (order-only: an
# upgraded header does not reinstall).
$(INSTALLED): pyproject.toml setup.py | $(BUILD_DEPENDENCIES)
	test -x $(VENV)/bin/pip || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -q -U pip 'setuptools>=77' wheel 'Cython>=3.0'
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Rebuilds the compiled core when a source changes or the build mode does.
$(BUILT): $(CORE_SOURCES) $(INSTALLED) | $(BUILD_DEPENDENCIES)
	rm -f fastpath/_core/.built-*
	FASTPATH_DEBUG=$(if $(filter debug,$(MODE)),1,0) $(PY) setup.py -q build_ext --inplace --force
	touch $@

lint: build
	$(VENV)/bin/ruff check fastpath tests bench
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/cython-lint fastpath/_core

clean:
	rm -rf build $(VENV) fastpath/_core/*.so fastpath/_core/.built-* *.egg-info
