# The two commands of the README: `make run` and `make test`. Both set everything up first, and
# every step is safe to repeat.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
MODE := $(if $(filter-out 0,$(FASTPATH_DEBUG)),debug,release)
BUILT := fastpath/_core/.built-$(MODE)
CORE_SOURCES := $(wildcard fastpath/_core/*.pyx fastpath/_core/*.pxd fastpath/_core/*.h) setup.py

.PHONY: run test test-suite bench-check build peers guest lint clean

# The packet benchmark, fastpath against DPDK's vhost PMD at every size (a few minutes).
run: build peers
	mkdir -p build
	$(VENV)/bin/fastpath bench pvp --peer dpdk --json build/pvp.json --plot build/pvp.png

test: build peers guest
	$(MAKE) --no-print-directory test-suite
	$(MAKE) --no-print-directory FASTPATH_DEBUG=1 test-suite

# The whole suite against the current build mode (FASTPATH_DEBUG=1: bounds checks on). Here a
# real peer that is missing fails its tests instead of skipping them (tests/conftest.py).
test-suite: build
	FASTPATH_REQUIRE_PEERS=1 $(PY) -m pytest -q

build: $(BUILT)

# The throughput regression check: a short PVP run of this tree's back-end against the back-end
# of BASELINE (a git revision, exported and built under build/baseline), alternated in one job.
# It fails if fastpath/baseline drops below BENCH_FLOOR at any size: a loss of more than 30%,
# wide enough for this shared machine's swings between runs, narrow enough for a real slip.
BASELINE ?= HEAD~1
BENCH_FLOOR ?= 0.7
BENCH_SIZES ?= 64,1518
BENCH_SECONDS ?= 2
BENCH_ROUNDS ?= 3
bench-check: build
	rm -rf build/baseline && mkdir -p build/baseline
	git archive --format=tar $(BASELINE) | tar -x -C build/baseline
	cd build/baseline && FASTPATH_DEBUG=0 ../../$(PY) setup.py -q build_ext --inplace
	$(VENV)/bin/fastpath bench pvp --baseline build/baseline --fail-below $(BENCH_FLOOR) \
		--sizes $(BENCH_SIZES) --seconds $(BENCH_SECONDS) --rounds $(BENCH_ROUNDS) \
		--no-progress --json build/bench-check.json

# The real peers of the interoperability tests and benchmarks, from Debian's packages (see the
# shared peers notes): DPDK's testpmd with its vhost and virtio-user PMDs, and QEMU with
# busybox for the Linux guest that tests/integration/guest/build.py puts together.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
TESTPMD := /usr/bin/dpdk-testpmd
QEMU := /usr/bin/qemu-system-x86_64
BUSYBOX := /bin/busybox
PEER_BINARIES := $(TESTPMD) $(QEMU) $(BUSYBOX)

peers: $(PEER_BINARIES)

# One apt run for all of them (a grouped target).
$(PEER_BINARIES) &:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
		dpdk dpdk-dev qemu-system-x86 busybox-static

# The guest kernel and initramfs (cached under build/guest; the tests build it on demand too).
guest: peers $(INSTALLED)
	$(PY) tests/integration/guest/build.py

$(INSTALLED): pyproject.toml setup.py
	test -x $(VENV)/bin/pip || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -q -U pip 'setuptools>=77' wheel 'Cython>=3.0'
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Rebuilds the compiled core when a source changes or the build mode does.
$(BUILT): $(CORE_SOURCES) $(INSTALLED)
	rm -f fastpath/_core/.built-*
	FASTPATH_DEBUG=$(if $(filter debug,$(MODE)),1,0) $(PY) setup.py -q build_ext --inplace --force
	touch $@

lint: build
	$(VENV)/bin/ruff check fastpath tests bench
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/cython-lint fastpath/_core

clean:
	rm -rf build $(VENV) fastpath/_core/*.so fastpath/_core/.built-* *.egg-info
