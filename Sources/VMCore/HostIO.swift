import CHost
import Glibc
import SystemPackage

/// A failed host system call, naming what svmm was doing and the errno.
public struct HostError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let errno: Errno
    public init(_ operation: String, _ errno: Errno) {
        self.operation = operation
        self.errno = errno
    }
    public var description: String { "\(operation) failed: \(errno) (errno \(errno.rawValue))" }
}

/// Writes to the host's file descriptors that svmm does not own (its stdout).
public enum HostIO {
    /// Opens /dev/null on each of descriptors 0, 1 and 2 that the parent
    /// left closed, before svmm opens anything else: otherwise its first
    /// files (/dev/kvm, a disk image, a TAP) would take those numbers, and
    /// the console's output would be written into a disk image, or its input
    /// read from one. Returns false when /dev/null cannot be opened.
    @discardableResult
    public static func keepStandardStreamsOpen() -> Bool {
        for fd in Int32(0)...2 where fcntl(fd, F_GETFD) < 0 && errno == EBADF {
            // open(2) takes the lowest free number: this one.
            let opened = open("/dev/null", O_RDWR)
            guard opened == fd else {
                if opened >= 0 { close(opened) }
                return false
            }
        }
        return true
    }

    /// Writes all of `bytes` to `fd` (swift-system's `writeAll`: resumes
    /// after EINTR and short writes), waiting in poll(2) while a non-blocking
    /// descriptor (one a parent process left O_NONBLOCK) is full, so output
    /// is neither dropped nor spun on. Returns false when `fd` fails
    /// otherwise (a closed pipe: EPIPE), with what was not written dropped.
    @discardableResult
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        let descriptor = FileDescriptor(rawValue: fd)
        var rest = bytes
        while !rest.isEmpty {
            do {
                let n = try descriptor.write(rest, retryOnInterrupt: true)
                rest = UnsafeRawBufferPointer(rebasing: rest[n...])
            } catch Errno.wouldBlock {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&p, 1, -1) < 0 && errno != EINTR { return false }
            } catch {
                return false
            }
        }
        return true
    }

    /// Fills `buffer` from `offset` of the file `fd` (pread, resumed after
    /// EINTR and short reads); the bytes read (fewer at the end of the
    /// file), or -errno.
    public static func readFully(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Int {
        let file = FileDescriptor(rawValue: fd)
        var done = 0
        while done < buffer.count {
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<min(buffer.count, done + (1 << 30))])
            do {
                let n = try file.read(fromAbsoluteOffset: Int64(offset) + Int64(done), into: chunk, retryOnInterrupt: true)
                if n == 0 { break }
                done += n
            } catch {
                return -Int((error as? Errno)?.rawValue ?? EIO)
            }
        }
        return done
    }
}

/// svmm's own messages, one line at a time, all through here: stderr,
/// written whole so lines from different threads never interleave.
public enum Messages {
    public static func line(_ text: String) { block(text + "\n") }

    /// Text that ends in its own newline (a table), written whole.
    public static func block(_ text: String) {
        var text = text
        text.withUTF8 { _ = HostIO.writeAll(2, UnsafeRawBufferPointer($0)) }
    }
}

/// Lets the process exit without waiting for the kernel to tear its VM down:
/// a helper that shares the address space and file table outlives the
/// process by a moment and drops the last references (CHost). Call once,
/// after the guest's output is flushed and the files are written; false when
/// the system refused (the exit then waits as usual).
@discardableResult
public func detachTeardown() -> Bool { chost_detach_teardown() == 0 }
