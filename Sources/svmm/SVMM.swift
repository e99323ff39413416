import Stats
import VMCore
import ArgumentParser
import Glibc
import Machine

@main
struct SVMM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "svmm",
        abstract: "A small, fast virtual machine monitor for Linux/x86-64.",
        version: "svmm \(version)",
        subcommands: [Boot.self, Serve.self, Ctl.self, Probe.self, RunFirmware.self, Stats.self]
    )
    static let version = "0.1.0"

    static func main() {
        HostIO.keepStandardStreamsOpen()
        Self.main(nil)
    }
}

/// svmm's exit statuses. Documented in README.md; keep the two in step.
enum ExitStatus: Int32 {
    case success = 0
    case failure = 1
    /// `svmm probe`: /dev/kvm works but cannot run a real (interrupt-taking) guest.
    case kvmNotUsable = 3
    /// A firmware program ended with a nonzero status.
    case guestFailed = 4
    /// The guest rebooted (or panicked with panic=-1, which reboots).
    case guestReboot = 10
    /// The guest kernel panicked and said so through pvpanic.
    case guestPanic = 11
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    case tripleFault = 12
    /// EX_DATAERR: the kernel or initrd cannot be booted as given.
    case badInput = 65
    /// The guest ran past --timeout.
    case timeout = 124
    /// EX_USAGE, as swift-argument-parser uses for bad options.
    case usage = 64
    /// EX_NOINPUT: a file named on the command line cannot be read.
    case noInput = 66
    /// EX_CANTCREAT: an output file (--stats, --stats-listen) cannot be created.
    case cannotCreate = 73
    /// EX_TEMPFAIL: a disk is locked by another process (a running svmm or
    /// QEMU using it), or a single-queue TAP is attached to another process.
    case inUse = 75
    /// EX_NOHOST: a --net TAP does not exist, or the interface is not a TAP.
    case noSuchTap = 68
    /// EX_NOPERM: a --net TAP is not this user's to attach.
    case noPermission = 77
    /// EX_CONFIG: `svmm serve --config-file` names a file that is not a valid configuration.
    case config = 78
    /// EX_UNAVAILABLE: /dev/kvm is missing or not accessible.
    case kvmUnavailable = 69
    /// A KVM internal error or failed entry: the guest could not be run.
    case kvmInternalError = 70
    /// A snapshot file without svmm's magic (`svmm serve --restore`).
    case notASnapshot = 80
    /// A snapshot of another format version.
    case snapshotVersion = 81
    /// A snapshot file cut short.
    case snapshotTruncated = 82
    /// A snapshot whose checksum does not match (corrupted).
    case snapshotCorrupted = 83
    /// A snapshot whose content does not fit (unknown sections, a machine or
    /// devices this svmm does not build that way).
    case snapshotMalformed = 84
    /// A memory file whose size is not the snapshot's guest RAM.
    case snapshotMemorySize = 85
    /// The person at the console typed Ctrl-A x (as a Ctrl-C would end a program: 128 + SIGINT).
    case consoleEscape = 130
}

/// Prints one line on stderr and exits with `status`.
func fail(_ message: String, _ status: ExitStatus) -> Never {
    Messages.line("svmm: error: \(message)")
    exit(status.rawValue)
}

/// Bytes on stdout, whole (the guest's console, reports).
func writeStdout(_ bytes: [UInt8]) {
    _ = bytes.withUnsafeBytes { HostIO.writeAll(1, $0) }
}
