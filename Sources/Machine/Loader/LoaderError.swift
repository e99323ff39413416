import VMCore
import Glibc

/// Why a kernel or initrd cannot be booted, as data. `description` says what
/// is wrong (and what to do where that needs no command-line flag); the
/// command line adds the hints that name its flags.
public enum LoaderError: Error, CustomStringConvertible, Equatable, Sendable {
    case notAKernel(path: String)
    case truncated(path: String, needed: Int, actual: Int)
    case protocolTooOld(path: String, version: UInt16)
    case no64BitEntry(path: String)
    case commandLineTooLong(length: Int, limit: Int)
    case initrdTooLarge(path: String, size: Int, room: UInt64)
    case memoryTooSmall(needed: UInt64, available: UInt64)
    case noPVHNote(path: String)
    case noPVHPath(path: String, reason: String)
    case readFailed(path: String, errno: Int32)
    case multibootUnsupported(path: String, what: String)
    case multibootOverlap(path: String, start: UInt64, end: UInt64)

    public var description: String {
        switch self {
        case .notAKernel(let p):
            return "\(p) is not a Linux kernel (no bzImage 'HdrS' header and not an ELF vmlinux)"
        case let .truncated(p, needed, actual):
            return "\(p) is truncated: the header promises \(needed) bytes, the file has \(actual): re-copy or rebuild the kernel"
        case let .protocolTooOld(p, v):
            return "\(p) uses Linux boot protocol \(v >> 8).\(String(format2: v & 0xFF)), svmm needs 2.06 or newer: use a kernel from 2.6.22 on"
        case .no64BitEntry(let p):
            return "\(p) has no 64-bit entry point (XLF_KERNEL_64 unset): build an x86_64 kernel"
        case let .commandLineTooLong(length, limit):
            return "the kernel command line is \(length) bytes, this kernel accepts at most \(limit)"
        case let .initrdTooLarge(p, size, room):
            return "\(p) (\(size >> 20) MiB) does not fit in the \(room >> 20) MiB of RAM the kernel can address for an initrd"
        case let .memoryTooSmall(needed, available):
            return "guest RAM of \(available >> 20) MiB is too small for the kernel and initrd (\(needed >> 20) MiB needed)"
        case let .noPVHPath(p, reason):
            return "\(p) cannot be booted through PVH: \(reason)"
        case let .readFailed(p, e):
            return "cannot read \(p): \(String(cString: strerror(e))): check the file and the disk it is on"
        case let .multibootUnsupported(p, what):
            return "\(p) is a Multiboot kernel svmm cannot load: \(what)"
        case let .multibootOverlap(p, start, end):
            return "\(p) loads at 0x\(String(start, radix: 16))-0x\(String(end, radix: 16)), outside the RAM a Multiboot kernel may use (from 1 MiB to the end of low RAM)"
        case .noPVHNote(let p):
            return "\(p) is an ELF kernel without a PVH entry note: build with CONFIG_PVH=y or boot the bzImage"
        }
    }
}

extension String {
    /// Two-digit decimal, for boot protocol minor versions.
    init(format2 value: UInt16) {
        self = value < 10 ? "0\(value)" : "\(value)"
    }
}
