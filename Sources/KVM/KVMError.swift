import Glibc

/// A failed KVM operation, naming the ioctl (or system call) and errno so a
/// person can act on it.
public struct KVMError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        "\(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }

    /// Turns a CKVM result (`-errno` on failure) into a value or a thrown error.
    @discardableResult
    static func check(_ operation: @autoclosure () -> String, _ result: Int32) throws(KVMError) -> Int32 {
        if result < 0 { throw KVMError(operation(), errno: -result) }
        return result
    }
}

/// Why `/dev/kvm` cannot be used at all, in words that say what to do.
public struct KVMUnavailable: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let errno: Int32

    public var description: String {
        switch errno {
        case ENOENT:
            return "\(path) does not exist: load the KVM module (modprobe kvm-intel or kvm-amd) and enable virtualization in the firmware, or enable nested virtualization on the host of this VM"
        case EACCES, EPERM:
            return "\(path): permission denied: add this user to the 'kvm' group or run as root"
        default:
            return "\(path) cannot be opened: \(String(cString: strerror(errno))) (errno \(errno))"
        }
    }
}
