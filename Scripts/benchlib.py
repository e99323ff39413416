"""Shared by the sandbox benchmarks (bench-boot, bench-console): counting
exits with KVM's tracepoints (a tracefs histogram, in the kernel that runs
KVM): kvm_userspace_exit for exits to the VMM, kvm_exit for every exit from
the guest, in-kernel ones included; and svmm's benchmark build."""
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


def build_static_svmm():
    subprocess.run(["swift", "build", "-c", "release", "--product", "svmm", "--build-path", str(REPO / ".build" / "static"),
                    "-Xswiftc", "-static-executable"], cwd=REPO, check=True, stdout=sys.stderr)
