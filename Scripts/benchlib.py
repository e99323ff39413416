"""Shared by the sandbox benchmarks (bench-boot, bench-console): counting
exits to userspace with KVM's kvm_userspace_exit tracepoint (a tracefs
histogram, in the kernel that runs KVM), and svmm's benchmark build."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRACE = Path("/sys/kernel/tracing")
EVENT = TRACE / "events" / "kvm" / "kvm_userspace_exit"
HIST = "hist:keys=reason:vals=hitcount"
# A fully static executable: no shared Swift runtime or libc to map (docs/benchmarks.md).
STATIC_SVMM = REPO / ".build" / "static" / "release" / "svmm"


def tracing_ready():
    if not (TRACE / "events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACE)], check=False, capture_output=True)
    return (EVENT / "trigger").exists()


def reset_exit_count():
    try:
        (EVENT / "trigger").write_text("!" + HIST)
    except OSError:
        pass
    (EVENT / "trigger").write_text(HIST)


def read_exit_count():
    total = 0
    for line in (EVENT / "hist").read_text().splitlines():
        if "hitcount:" in line and not line.startswith("#"):
            total += int(line.split("hitcount:")[1].split()[0])
    return total


def build_static_svmm():
    subprocess.run(["swift", "build", "-c", "release", "--product", "svmm", "--build-path", str(REPO / ".build" / "static"),
                    "-Xswiftc", "-static-executable"], cwd=REPO, check=True, stdout=sys.stderr)
