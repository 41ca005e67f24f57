#!/usr/bin/env python3
"""Build the Linux guest of the QEMU interoperability tests: a kernel and a small initramfs.

    python tests/integration/guest/build.py [--out DIR] [--kernel-package NAME] [--force]

Everything comes from Debian packages (see the shared notes on peers, "QEMU 7.2 with a Linux
guest"):

* the kernel: ``apt-get download`` of the ``linux-image-<version>-amd64`` package that
  ``linux-image-amd64`` depends on (downloaded, never installed), unpacked with
  ``dpkg-deb -x``. Its compressed ``vmlinuz`` (a bzImage) is turned back into the uncompressed
  ELF ``vmlinux``: Debian builds with CONFIG_PVH, so QEMU's ``-kernel`` boots that ELF through
  its PVH entry point, about 2.5 s sooner under TCG than the bzImage, which has to decompress
  itself. When the payload cannot be decompressed here the bzImage is used instead.
* the virtio modules: virtio, virtio_ring, virtio_pci_modern_dev, virtio_pci_legacy_dev,
  virtio_pci, failover, net_failover, virtio_net, virtio_blk, and whatever else they need. The
  package has no modules.dep, so what they need and the load order come from each module's own
  ``depends=`` (virtio_ring goes first); modules the kernel has built in are left out.
  Compressed ones (.ko.xz, .ko.zst, .ko.gz) are decompressed, since busybox's insmod may not
  read them.
* the initramfs (cpio "newc", gzip), written here without the cpio tool: ``/bin/busybox``
  from busybox-static with a link for each of its applets, ``/dev/console``, the modules, the
  test programs ``/bin/netcheck`` and ``/bin/blkcheck`` (``netcheck.c`` and ``blkcheck.c``
  next to this script, ``gcc -static``) and ``/init``. The init script mounts /proc, /sys and
  /dev, loads the modules, and checks the network, or the disk when the kernel command line
  has ``blkcheck=``; then it powers off, so QEMU (``-no-reboot``) exits.

  The network: it brings eth0 up, prints the device's negotiated virtio feature bits
  (``NETCHECK FEATURES <bits>``) and the transmit queues the driver uses (``NETCHECK QUEUES
  n``) and runs netcheck with the arguments of the kernel parameter ``netcheck=ARG,ARG,...``.
  With ``netcheck_cpus=0,1,...`` it runs netcheck once pinned to each of those CPUs instead,
  each run after a line ``NETCHECK CPU k`` (a multiqueue driver transmits on the queue pair
  of the CPU it runs on). With ``netcheck_rebind=N`` it then N times unbinds the virtio_net
  driver (a device reset), binds it again and runs netcheck again, each time after a line
  ``NETCHECK REBIND k``.

  The disk: it waits for /dev/vda, prints the device's negotiated feature bits (``BLKCHECK
  FEATURES <bits>``), the hardware queues blk-mq made for it (``BLKCHECK QUEUES n``) and the
  cache mode the driver chose (``BLKCHECK CACHE write-back`` or ``write-through``), runs
  blkcheck with the arguments of ``blkcheck=ARG,ARG,...`` (then ``BLKCHECK EXIT status``), and
  prints each request queue's interrupts summed over the CPUs (``BLKCHECK INTERRUPTS
  virtio0-req.K COUNT``). With ``blkcheck_cpus=0,1,...`` it runs blkcheck once pinned to each
  of those CPUs instead, each run after a line ``BLKCHECK CPU k`` and with the pattern seed
  ``-S k`` (blk-mq submits on the queue it maps the CPU to).

The output directory (default ``build/guest`` under the repository root, which git ignores)
holds the cached package, the kernel and modules per kernel version, and ``guest.json``: the
paths of ``kernel`` and ``initrd`` and what they were built from. A second run with the same
inputs (kernel package and version, the programs' sources, this script, busybox) does nothing
but print ``guest.json``. Without apt's package lists (or offline) the newest kernel already in
the cache is used.

Exit status: 0 with ``guest.json`` printed on stdout; 2 when something the build needs is
missing (apt, dpkg-deb, gcc with a static libc, busybox-static), with the reason on stderr; 1
on any other failure.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
DEFAULT_OUT = ROOT / "build" / "guest"
# The static test programs, each /bin/NAME in the initramfs: the network's and the disk's.
PROGRAMS = {"netcheck": HERE / "netcheck.c", "blkcheck": HERE / "blkcheck.c"}
BUSYBOX = Path("/bin/busybox")
META_PACKAGE = "linux-image-amd64"
MODULES = ["virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
           "virtio_pci", "failover", "net_failover", "virtio_net", "virtio_blk"]
FORMAT = 4  # bump when the layout of the output changes

INIT = r"""#!/bin/sh
# The test guest's init (written by tests/integration/guest/build.py).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
args=""
rebind=0
cpus=""
blkargs=""
blkcpus=""
for word in $(cat /proc/cmdline); do
    case "$word" in
        netcheck=*) args=$(echo "${word#netcheck=}" | tr , ' ') ;;
        netcheck_rebind=*) rebind=${word#netcheck_rebind=} ;;
        netcheck_cpus=*) cpus=$(echo "${word#netcheck_cpus=}" | tr , ' ') ;;
        blkcheck=*) blkargs=$(echo "${word#blkcheck=}" | tr , ' ') ;;
        blkcheck_cpus=*) blkcpus=$(echo "${word#blkcheck_cpus=}" | tr , ' ') ;;
    esac
done
# The guest checks its disk (blkcheck=...) or else its network; every line it prints starts
# with the name of that check's program.
if [ -n "$blkargs" ]; then
    echo "BLKCHECK BOOTED $(cut -d' ' -f1 /proc/uptime)"
else
    echo "NETCHECK BOOTED $(cut -d' ' -f1 /proc/uptime)"
fi
for m in %(modules)s; do
    if ! insmod /lib/modules/$m.ko; then
        if [ -n "$blkargs" ]; then
            echo "BLKCHECK INSMOD FAIL module=$m"
        else
            echo "NETCHECK FAIL reason=insmod:$m"
        fi
    fi
done

blk_check() {
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -b /dev/vda ]; then
        echo "BLKCHECK DISK FAIL reason=no-vda"
        return
    fi
    for d in /sys/bus/virtio/devices/*; do
        [ -e $d/block ] && echo "BLKCHECK FEATURES $(cat $d/features)"
    done
    # The hardware queues blk-mq made: one per request queue the driver uses.
    echo "BLKCHECK QUEUES $(ls -d /sys/block/vda/mq/* | wc -l)"
    # The cache mode the driver took from the device: only "write back" sends flushes.
    echo "BLKCHECK CACHE $(cat /sys/block/vda/queue/write_cache | tr ' ' -)"
    if [ -n "$blkcpus" ]; then
        # blkcheck_cpus=0,1: blkcheck once pinned to each CPU, which submits on the queue
        # blk-mq maps that CPU to; each run writes a pattern of its own (the seed is the CPU).
        for cpu in $blkcpus; do
            echo "BLKCHECK CPU $cpu"
            taskset -c $cpu /bin/blkcheck $blkargs -S $cpu
            echo "BLKCHECK EXIT $?"
        done
    else
        /bin/blkcheck $blkargs
        echo "BLKCHECK EXIT $?"
    fi
    # Each request queue's interrupts, over all CPUs: the device signalled completions on it.
    awk '$NF ~ /-req\.[0-9]+$/ {
        n = 0
        for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i
        print "BLKCHECK INTERRUPTS " $NF " " n
    }' /proc/interrupts
}

wait_eth0() {
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ -e /sys/class/net/eth0 ]
}

net_check() {
    if ! wait_eth0; then
        echo "NETCHECK FAIL reason=no-eth0"
        return
    fi
    for d in /sys/bus/virtio/devices/*; do
        [ -e $d/net ] && echo "NETCHECK FEATURES $(cat $d/features)"
    done
    ip link set eth0 up
    # The transmit queues the driver uses (it enables one queue pair per CPU, up to the
    # device's maximum).
    echo "NETCHECK QUEUES $(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)"
    if [ -n "$cpus" ]; then
        # netcheck_cpus=0,1: netcheck once pinned to each CPU, which transmits on the queue
        # pair the driver maps that CPU to (and receives on it too, from an io back-end).
        for cpu in $cpus; do
            echo "NETCHECK CPU $cpu"
            taskset -c $cpu /bin/netcheck $args -r $((cpu * 1000))
            echo "NETCHECK EXIT $?"
        done
    else
        /bin/netcheck $args
        echo "NETCHECK EXIT $?"
    fi
    # netcheck_rebind=N: N times, unbind the driver (the device is reset) and bind it again
    # (the driver sets the device up from scratch, as after a guest reboot), and check again.
    n=0
    while [ $n -lt $rebind ]; do
        n=$((n + 1))
        dev=$(basename $(readlink -f /sys/class/net/eth0/device))
        echo $dev > /sys/bus/virtio/drivers/virtio_net/unbind
        echo $dev > /sys/bus/virtio/drivers/virtio_net/bind
        if ! wait_eth0; then echo "NETCHECK FAIL reason=no-eth0-after-rebind"; break; fi
        ip link set eth0 up
        echo "NETCHECK REBIND $n"
        /bin/netcheck $args
        echo "NETCHECK EXIT $?"
    done
}

if [ -n "$blkargs" ]; then
    blk_check
else
    net_check
fi
poweroff -f
"""


class Missing(RuntimeError):
    """Something the build needs is not installed or not available."""


def log(message: str) -> None:
    """Progress on stderr (stdout is for guest.json)."""
    print(f"guest build: {message}", file=sys.stderr, flush=True)


def run(*cmd: str | os.PathLike, text: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, with its output captured; raise with that output when it fails."""
    try:
        result = subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=text,
                                **kwargs)
    except FileNotFoundError as e:
        raise Missing(f"{cmd[0]} is not installed") from e
    if result.returncode != 0:
        output = result.stderr if text else result.stderr.decode(errors="replace")
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                           f"{output}")
    return result


def sha256(data: bytes) -> str:
    """Hex digest of bytes."""
    return hashlib.sha256(data).hexdigest()


def apt_options() -> list[str]:
    """As root, apt downloads through the unprivileged _apt user, who cannot write into
    arbitrary directories (it warns and downloads as root anyway): say so up front."""
    return ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []


# --- the kernel package -------------------------------------------------------------------------

def package_version(name: str) -> str | None:
    """The version of `name` apt would install, or None when apt knows no such package."""
    show = subprocess.run(["apt-cache", "show", "--no-all-versions", name], capture_output=True,
                          text=True)
    version = re.search(r"^Version:\s*(\S+)", show.stdout, re.M)
    return version.group(1) if show.returncode == 0 and version else None


def kernel_package() -> tuple[str, str] | None:
    """(name, version) of the kernel image package that linux-image-amd64 depends on, or None
    when apt knows of none (no package lists). One ``apt-cache show`` of the meta-package
    usually gives both (``Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)``); each call takes
    a second or two here, since apt keeps no binary cache on this system."""
    if shutil.which("apt-cache") is None:
        return None
    show = subprocess.run(["apt-cache", "show", "--no-all-versions", META_PACKAGE],
                          capture_output=True, text=True)
    depends = re.search(r"^Depends:.*?\b(linux-image-[0-9][^\s,]*-amd64)\b(?:\s*\(= ([^)]+)\))?",
                        show.stdout, re.M)
    if show.returncode != 0 or not depends:
        return None
    name, version = depends.group(1), depends.group(2) or package_version(depends.group(1))
    return (name, version) if version else None


def download(name: str, version: str, debs: Path) -> Path:
    """The package's .deb in `debs`, downloaded with apt-get unless it is already there."""
    debs.mkdir(parents=True, exist_ok=True)
    file_version = version.replace(":", "%3a")
    deb = debs / f"{name}_{file_version}_amd64.deb"
    if deb.exists():
        return deb
    log(f"downloading {name} {version}")
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        run("apt-get", *apt_options(), "download", f"{name}={version}", cwd=tmp)
        found = list(Path(tmp).glob("*.deb"))
        if len(found) != 1:
            raise RuntimeError(f"apt-get download left {found} in {tmp}")
        found[0].rename(deb)
    return deb


def decompress_bzimage(image: bytes) -> bytes | None:
    """The uncompressed ELF vmlinux inside a bzImage, or None when its payload is in a format
    this Python cannot decompress (only gzip, xz/lzma and zstd with the zstandard module)."""
    if image[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", image, 0x206)[0] < 0x208:
        return None
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = image[start:start + length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            elf = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(b"\x5d\x00\x00"):
            elf = lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        elif payload.startswith(b"\x28\xb5\x2f\xfd"):
            import zstandard  # not in the standard library; a bzImage is rarely zstd
            elf = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        else:
            return None
    except (ImportError, lzma.LZMAError, zlib.error):
        return None
    return elf if elf.startswith(b"\x7fELF") else None


def decompress_module(path: Path) -> bytes:
    """A kernel module's bytes, decompressed when its name says it is compressed."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        return run("zstd", "-dc", path, text=False).stdout
    return data


def module_depends(module: bytes) -> list[str]:
    """The modules a module needs loaded first: the ``depends=`` of its .modinfo section."""
    found = re.search(rb"(?:^|\0)depends=([^\0]*)\0", module)
    if found is None:
        return []
    return [d.decode().replace("-", "_") for d in found.group(1).split(b",") if d]


def _module_name(path: Path | str) -> str:
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", Path(path).name).replace("-", "_")


def copy_modules(tree: Path, target: Path, package: str) -> dict[str, list[str]]:
    """Copy MODULES, and the modules they need, out of the package's module tree into
    `target` as ``NAME.ko``, decompressed; returns each copied module's dependencies. Modules
    the kernel has built in (modules.builtin) are left out, and so are dependencies on them."""
    available = {_module_name(p): p for p in tree.rglob("*.ko*")}
    builtin_list = tree / "modules.builtin"
    builtin = ({_module_name(line) for line in builtin_list.read_text().split()}
               if builtin_list.exists() else set())
    depends: dict[str, list[str]] = {}
    wanted = list(MODULES)
    while wanted:
        name = wanted.pop(0)
        if name in depends or name in builtin:
            continue
        if name not in available:
            raise RuntimeError(f"{package} has no module {name}")
        data = decompress_module(available[name])
        (target / f"{name}.ko").write_bytes(data)
        depends[name] = [d for d in module_depends(data) if d not in builtin]
        wanted += depends[name]
    return depends


def load_order(depends: dict[str, list[str]]) -> list[str]:
    """The modules in an order insmod can load them (dependencies first), as close to MODULES
    as that allows. (The order in the shared notes loads virtio before virtio_ring, which
    virtio needs.)"""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise RuntimeError(f"modules depend on each other in a cycle: {path}")
        for d in depends[name]:
            visit(d, (*path, name))
        order.append(name)

    for name in [*MODULES, *depends]:
        if name in depends:
            visit(name, ())
    return order


def kernel_info(kernel_dir: Path) -> dict | None:
    """The kernel.json of a kernel directory this version of the script made, or None."""
    try:
        info = json.loads((kernel_dir / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("format") == FORMAT else None


def extract_kernel(deb: Path, target: Path) -> dict:
    """Unpack the package into a temporary directory and keep the kernel and the modules in
    `target` (made atomically); returns what kernel.json there describes."""
    info = kernel_info(target)
    if info is not None:
        return info
    log(f"unpacking {deb.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as tmp:
        root = Path(tmp) / "root"
        run("dpkg-deb", "-x", deb, root)
        images = sorted((root / "boot").glob("vmlinuz-*"))
        if len(images) != 1:
            raise RuntimeError(f"expected one vmlinuz in {deb.name}, found {images}")
        release = images[0].name.removeprefix("vmlinuz-")
        out = Path(tmp) / "out"
        (out / "modules").mkdir(parents=True)
        bzimage = images[0].read_bytes()
        vmlinux = decompress_bzimage(bzimage)
        if vmlinux is not None:
            kernel, kind = "vmlinux", "elf-pvh"
            (out / kernel).write_bytes(vmlinux)
        else:
            kernel, kind = "vmlinuz", "bzimage"
            (out / kernel).write_bytes(bzimage)
            log("cannot decompress the kernel here: using the bzImage (slower to boot)")
        depends = copy_modules(root / "lib" / "modules" / release, out / "modules", deb.name)
        info = {"format": FORMAT, "release": release, "kernel": kernel, "kind": kind,
                "package": deb.name, "kernel_sha256": sha256((out / kernel).read_bytes()),
                "load_order": load_order(depends)}
        (out / "kernel.json").write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    return info


# --- the initramfs ------------------------------------------------------------------------------

class Cpio:
    """A cpio archive in the "newc" format, as the kernel's initramfs unpacker reads it."""

    def __init__(self):
        self._out = io.BytesIO()
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", *, rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        name_bytes = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name_bytes), 0]
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + name_bytes)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        """A directory (and its parents), once."""
        parts = name.strip("/").split("/")
        for k in range(1, len(parts) + 1):
            path = "/".join(parts[:k])
            if path and path not in self._dirs:
                self._dirs.add(path)
                self._entry(path, 0o040755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """A regular file."""
        self.directory(os.path.dirname(name))
        self._entry(name.strip("/"), 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        """A symbolic link to `target`."""
        self.directory(os.path.dirname(name))
        self._entry(name.strip("/"), 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A character device node (in the archive only: no privilege needed)."""
        self.directory(os.path.dirname(name))
        self._entry(name.strip("/"), 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive, with its trailer."""
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def busybox_applets() -> list[str]:
    """Where busybox-static wants its applets (bin/sh, sbin/insmod, ...)."""
    if not BUSYBOX.exists():
        raise Missing(f"{BUSYBOX} is missing: install busybox-static")
    kind = run("file", "-b", BUSYBOX).stdout if shutil.which("file") else "statically linked"
    if "statically linked" not in kind and "static-pie" not in kind:
        raise Missing(f"{BUSYBOX} is not statically linked: install busybox-static")
    return [a.strip("/") for a in run(BUSYBOX, "--list-full").stdout.split()]


def compile_program(source: Path, target: Path) -> None:
    """A test program's C source, static, into `target`."""
    if shutil.which("gcc") is None:
        raise Missing("gcc is not installed")
    try:
        run("gcc", "-static", "-O2", "-s", "-Wall", "-Wextra", "-o", target, source)
    except RuntimeError as e:
        if "cannot find -lc" in str(e):
            raise Missing("no static C library (libc6-dev)") from e
        raise


def build_initramfs(kernel_dir: Path, programs: dict[str, Path]) -> bytes:
    """The gzip-compressed initramfs, with `programs` (name: compiled file) in /bin."""
    cpio = Cpio()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc",
              "lib/modules"):
        cpio.directory(d)
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in busybox_applets():
        if applet != "bin/busybox":
            cpio.symlink(applet, "/bin/busybox")
    order = kernel_info(kernel_dir)["load_order"]
    for name in order:
        cpio.file(f"lib/modules/{name}.ko", (kernel_dir / "modules" / f"{name}.ko").read_bytes())
    for name, program in programs.items():
        cpio.file(f"bin/{name}", program.read_bytes(), 0o755)
    cpio.file("init", (INIT % {"modules": " ".join(order)}).encode(), 0o755)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


# --- the whole build ----------------------------------------------------------------------------

def cached_kernels(out: Path) -> list[Path]:
    """Kernel directories already in the cache, newest first."""
    return sorted((p.parent for p in out.glob("kernel-*/kernel.json")
                   if kernel_info(p.parent) is not None),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def build(out: Path, package: str | None = None, force: bool = False) -> dict:
    """Build (or find in the cache) the guest under `out`; returns guest.json's contents.
    Builds into the same directory wait for each other (a lock on ``out/.lock``)."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # With the lock held, work directories are what a killed build left behind.
        for stale in [*out.glob(".unpack-*"), *out.glob(".initrd-*"), *out.glob("debs/tmp*")]:
            shutil.rmtree(stale, ignore_errors=True)
        return _build(out, package, force)


def _build(out: Path, package: str | None, force: bool) -> dict:
    if force:
        for p in out.iterdir():
            if p.name in ("debs", ".lock"):
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    if package:
        version = package_version(package)
        if not version:
            raise Missing(f"apt knows no package {package}")
        wanted = (package, version)
    else:
        wanted = kernel_package()
    if wanted is not None:
        name, version = wanted
        kernel_dir = out / f"kernel-{name.removeprefix('linux-image-')}_{version}"
        if kernel_info(kernel_dir) is None:
            if shutil.which("dpkg-deb") is None:
                raise Missing("dpkg-deb is not installed")
            deb = download(name, version, out / "debs")
            extract_kernel(deb, kernel_dir)
    else:
        cached = cached_kernels(out)
        if not cached:
            raise Missing(f"apt offers no {META_PACKAGE} (run apt-get update) and no kernel "
                          f"is cached in {out}")
        kernel_dir = cached[0]
        log(f"apt offers no {META_PACKAGE}: using the cached {kernel_dir.name}")
    kernel = kernel_info(kernel_dir)

    busybox = BUSYBOX.read_bytes() if BUSYBOX.exists() else b""
    inputs = {
        "format": FORMAT,
        "kernel": kernel["kernel_sha256"],
        **{source.name: sha256(source.read_bytes()) for source in PROGRAMS.values()},
        "build.py": sha256(Path(__file__).read_bytes()),
        "busybox": sha256(busybox),
    }
    manifest_file = out / "guest.json"
    if manifest_file.exists():
        manifest = json.loads(manifest_file.read_text())
        if (manifest.get("inputs") == inputs and Path(manifest["kernel"]).exists()
                and Path(manifest["initrd"]).exists()):
            return manifest

    log(f"building the initramfs for {kernel['release']}")
    with tempfile.TemporaryDirectory(dir=out, prefix=".initrd-") as tmp:
        programs = {name: Path(tmp) / name for name in PROGRAMS}
        for name, source in PROGRAMS.items():
            compile_program(source, programs[name])
        initrd = build_initramfs(kernel_dir, programs)
        staged = Path(tmp) / "initrd.cpio.gz"
        staged.write_bytes(initrd)
        for name, program in programs.items():
            program.replace(out / name)
        staged.replace(out / "initrd.cpio.gz")
    manifest = {
        "kernel": str(kernel_dir / kernel["kernel"]),
        "kernel_kind": kernel["kind"],
        "initrd": str(out / "initrd.cpio.gz"),
        "release": kernel["release"],
        "package": kernel["package"],
        "modules": kernel["load_order"],
        "inputs": inputs,
    }
    staged_manifest = out / ".guest.json.tmp"
    staged_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    staged_manifest.replace(manifest_file)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: build, print guest.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"cache and output directory (default {DEFAULT_OUT})")
    parser.add_argument("--kernel-package", metavar="NAME",
                        help=f"the kernel image package (default: what {META_PACKAGE} "
                        "depends on)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild everything but the downloaded package")
    args = parser.parse_args(argv)
    try:
        manifest = build(args.out, args.kernel_package, args.force)
    except Missing as e:
        print(f"guest build: cannot build the guest: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:
        print(f"guest build: failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
