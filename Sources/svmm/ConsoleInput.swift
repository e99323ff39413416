import SystemPackage
import Glibc
import Machine
import VMCore

/// The console's escape key, as QEMU's `-serial mon:stdio` and kvmtool have
/// it: Ctrl-A, then x quits, p pauses or resumes the guest, Ctrl-A sends
/// one Ctrl-A, h prints the keys; Ctrl-A then any other key sends both.
/// It works on any stdin, a terminal or not (through Scripts/boot's sandbox
/// svmm's stdin is a socket).
struct ConsoleEscape {
    static let key: UInt8 = 0x01
    static let help = "svmm: console: Ctrl-A x quits, Ctrl-A p pauses and resumes the guest, Ctrl-A Ctrl-A sends Ctrl-A"
    enum Command: Equatable { case quit, togglePause, help }

    private var escaped = false

    /// The bytes for the guest, and the commands typed, in order.
    mutating func feed(_ bytes: some Collection<UInt8>) -> (forward: [UInt8], commands: [Command]) {
        var forward: [UInt8] = [], commands: [Command] = []
        for b in bytes {
            if escaped {
                escaped = false
                switch b {
                case UInt8(ascii: "x"), UInt8(ascii: "X"): commands.append(.quit)
                case UInt8(ascii: "p"), UInt8(ascii: "P"): commands.append(.togglePause)
                case UInt8(ascii: "h"), UInt8(ascii: "H"), UInt8(ascii: "?"): commands.append(.help)
                case Self.key: forward.append(Self.key)
                default: forward += [Self.key, b]
                }
            } else if b == Self.key {
                escaped = true
            } else {
                forward.append(b)
            }
        }
        return (forward, commands)
    }
}

/// Reads svmm's stdin on its own thread, takes out the escape commands and
/// hands the rest to the guest's console: COM1's receive FIFO, or a pipe the
/// virtio-console reads.
final class ConsoleInput: Sendable {
    /// The pipe's read end, for the virtio-console (nil for COM1).
    let virtioInput: Int32?
    private let pipeWrite: Int32

    init(virtio: Bool) throws(HostError) {
        if virtio {
            var fds: [Int32] = [0, 0]
            guard pipe(&fds) == 0 else { throw HostError("pipe for the virtio-console's input", .init(rawValue: errno)) }
            _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC); _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
            virtioInput = fds[0]
            pipeWrite = fds[1]
        } else {
            virtioInput = nil
            pipeWrite = -1
        }
    }

    /// Starts the reader: bytes to `serial` (or the pipe), commands to `machine`.
    func start(serial: Serial16550, machine: RunningMachine) throws(HostError) {
        let pipeWrite = pipeWrite
        if Self.stdinIsEmpty {
            // Closed or /dev/null (a CI job's usual stdin): the reader would
            // see the end at once, so no thread is made for it.
            if pipeWrite >= 0 { close(pipeWrite) }
            return
        }
        try startHostThread("console input", detached: true) {
            var escape = ConsoleEscape()
            var buffer = [UInt8](repeating: 0, count: 256)
            while true {
                let n = (try? buffer.withUnsafeMutableBytes { try FileDescriptor.standardInput.read(into: $0) }) ?? 0
                if n <= 0 { break }
                let (forward, commands) = escape.feed(buffer[0..<n])
                if pipeWrite >= 0 {
                    _ = forward.withUnsafeBytes { HostIO.writeAll(pipeWrite, $0) }
                } else {
                    var pending = forward[...]
                    while !pending.isEmpty {
                        let taken = serial.receive(Array(pending))
                        pending = pending.dropFirst(taken)
                        if !pending.isEmpty { usleep(1000) }
                    }
                }
                for command in commands {
                    switch command {
                    case .quit:
                        machine.stop(.consoleEscape)
                    case .togglePause:
                        if machine.isPaused {
                            machine.resume()
                            Messages.line("svmm: resumed")
                        } else {
                            machine.pause()
                            Messages.line("svmm: paused (Ctrl-A p resumes)")
                        }
                    case .help:
                        Messages.line(ConsoleEscape.help)
                    }
                }
            }
            if pipeWrite >= 0 { close(pipeWrite) }   // the virtio-console sees end of input
        }
    }

    /// Whether stdin is closed or is /dev/null: reading it would end at once.
    static var stdinIsEmpty: Bool {
        var input = stat(), null = stat()
        guard fstat(0, &input) == 0 else { return errno == EBADF }
        guard stat("/dev/null", &null) == 0 else { return false }
        return input.st_mode & S_IFMT == S_IFCHR && input.st_rdev == null.st_rdev
    }
}
