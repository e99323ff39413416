"""Shared by the sandbox benchmarks (bench-boot, bench-console): counting
exits with KVM's tracepoints (a tracefs histogram, in the kernel that runs
KVM): kvm_userspace_exit for exits to the VMM, kvm_exit for every exit from
the guest, in-kernel ones included; and svmm's benchmark build."""
import struct
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRACE = Path("/sys/kernel/tracing")
USERSPACE_EXITS = "kvm_userspace_exit"
ALL_EXITS = "kvm_exit"
# common_pid exists on every event: one bucket per thread, summed on reading.
HIST = "hist:keys=common_pid:vals=hitcount"
# A fully static executable: no shared Swift runtime or libc to map (docs/benchmarks.md).
STATIC_SVMM = REPO / ".build" / "static" / "release" / "svmm"


def event_dir(event):
    return TRACE / "events" / "kvm" / event


def tracing_ready(event=USERSPACE_EXITS):
    if not (TRACE / "events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACE)], check=False, capture_output=True)
    return (event_dir(event) / "trigger").exists()


def reset_exit_count(event=USERSPACE_EXITS):
    trigger = event_dir(event) / "trigger"
    try:
        trigger.write_text("!" + HIST)
    except OSError:
        pass
    trigger.write_text(HIST)


def read_exit_count(event=USERSPACE_EXITS):
    total = 0
    for line in (event_dir(event) / "hist").read_text().splitlines():
        if "hitcount:" in line and not line.startswith("#"):
            total += int(line.split("hitcount:")[1].split()[0])
    return total


def build_static_svmm(*extra):
    subprocess.run([str(REPO / "Scripts" / "build-static"), *extra], cwd=REPO, check=True, stdout=sys.stderr)


def trivial_pvh_kernel(path):
    """An ELF64 vmlinux with a PVH note whose 32-bit entry writes the ACPI
    soft-off value to the sleep control port (0x600) and halts."""
    load = 0x100_0000
    code = bytes([0xB0, 5 << 2 | 0x20, 0x66, 0xBA, 0x00, 0x06, 0xEE, 0xF4])
    note = struct.pack("<III4sI", 4, 4, 18, b"Xen\0", load)
    phoff, phnum = 64, 2
    note_off = phoff + 56 * phnum
    code_off = note_off + len(note)
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, load, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    load_ph = struct.pack("<IIQQQQQQ", 1, 7, code_off, load | 0xFFFF_FFFF_8000_0000, load, len(code), len(code), 0x1000)
    note_ph = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    Path(path).write_bytes(ehdr + load_ph + note_ph + note + code)
