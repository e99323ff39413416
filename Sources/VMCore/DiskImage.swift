import CHost
import Glibc
import SystemPackage

/// A raw disk image file or host block device behind a virtio-blk device.
///
/// Opening never creates or truncates anything: no O_CREAT, no O_TRUNC. A
/// read-only disk is opened O_RDONLY, so no request can reach the file. The
/// image is locked with an open-file-description lock for as long as svmm
/// holds it (shared for read-only, exclusive for read-write, as QEMU's image
/// locking): a second svmm writing the same image is refused, read-only
/// sharing is allowed. The lock goes with the file descriptor.
public final class DiskImage: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): every stored property is immutable; the
    // I/O calls take explicit offsets (pread/pwrite), so concurrent callers
    // do not share a file position.

    /// What `cache=` asks of a guest's FLUSH.
    public enum Cache: String, Sendable, CaseIterable {
        /// FLUSH is an fdatasync that completes before the guest hears of it (the default).
        case writeback
        /// As writeback, with the host's page cache bypassed (O_DIRECT): the
        /// guest's reads and writes go straight to the file system, many in
        /// flight at once. Guest buffers not aligned for it go through an
        /// aligned bounce buffer.
        case none
        /// FLUSH is acknowledged without syncing (Firecracker's `Unsafe`): for
        /// throwaway guests, whose data may be lost if the host crashes.
        case unsafe
    }

    public struct Options: Sendable, Equatable {
        public var path: String
        public var readOnly = false
        /// GET_ID's answer (at most 20 bytes; `/sys/block/vdX/serial`).
        public var serial: String?
        public var cache = Cache.writeback
        /// Whether the guest may discard (punch holes in the file).
        public var discard = true

        public init(path: String, readOnly: Bool = false, serial: String? = nil, cache: Cache = .writeback, discard: Bool = true) {
            self.path = path
            self.readOnly = readOnly
            self.serial = serial
            self.cache = cache
            self.discard = discard
        }
    }

    public let options: Options
    /// The image's size in bytes (for a block device, the device's).
    public let size: UInt64
    /// Whether the image is a host block device (discard and write-zeroes
    /// then go through the block layer's ioctls).
    public let isBlockDevice: Bool
    /// The open image, for I/O submitted elsewhere (AsyncIO).
    public let fd: Int32

    /// Opens and locks the image; on any failure nothing stays open or locked.
    public init(_ options: Options) throws(DiskError) {
        let path = options.path
        let direct = options.cache == .none
        var fd = open(path, (options.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct ? chost_o_direct() : 0))
        if fd < 0, errno == EINVAL, direct {
            // The file system refuses O_DIRECT (tmpfs before Linux 6.6): say
            // so, rather than a bare "Invalid argument".
            fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd >= 0 { close(fd); throw DiskError(path: path, problem: .noDirectIO) }
            throw DiskError(path: path, problem: .cannotOpen(errno: EINVAL))
        }
        guard fd >= 0 else { throw DiskError(path: path, problem: .cannotOpen(errno: errno)) }
        func fail(_ problem: DiskError.Problem) -> DiskError {
            close(fd)
            return DiskError(path: path, problem: problem)
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw fail(.cannotOpen(errno: errno)) }
        let type = st.st_mode & S_IFMT
        var size: UInt64
        switch type {
        case S_IFREG:
            size = UInt64(st.st_size)
        case S_IFBLK:
            size = 0
            guard ioctl(fd, Self.blockGetSize64, &size) == 0 else { throw fail(.cannotOpen(errno: errno)) }
        case S_IFDIR:
            throw fail(.cannotOpen(errno: EISDIR))
        default:
            throw fail(.notADisk)
        }
        let locked = chost_lock_file(fd, options.readOnly ? 0 : 1)
        guard locked == 0 else {
            throw fail(-locked == EAGAIN || -locked == EACCES ? .locked(readOnly: options.readOnly) : .cannotOpen(errno: -locked))
        }
        self.options = options
        self.fd = fd
        self.size = size
        self.isBlockDevice = type == S_IFBLK
    }

    deinit { close(fd) }

    /// BLKGETSIZE64 (linux/fs.h): _IOR(0x12, 114, size_t).
    static let blockGetSize64: UInt = 0x8008_1272

    /// Whether I/O on these bytes can go to the image as they are: always,
    /// but with `cache=none` only for addresses and lengths aligned to the
    /// direct-I/O granule (offsets are whole sectors).
    public func isAligned(_ address: UnsafeRawPointer?, count: Int) -> Bool {
        guard options.cache == .none else { return true }
        return Int(bitPattern: address) % Self.directAlignment == 0 && count % Self.directAlignment == 0
    }

    /// The alignment O_DIRECT asks of buffers, lengths and offsets: a sector
    /// (what virtio-blk's requests are made of; a disk with 4 KiB logical
    /// sectors asks more and answers unaligned requests with an error).
    public static let directAlignment = 512

    /// Runs `body` with a page-aligned scratch buffer of `count` bytes, for
    /// `cache=none` I/O whose own buffers are not aligned (a bounce buffer).
    public func withAlignedBuffer<R>(_ count: Int, _ body: (UnsafeMutableRawBufferPointer) -> R) -> R {
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 4096)
        defer { raw.deallocate() }
        return body(UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]))
    }

    /// Reads `buffer.count` bytes at `offset`; the bytes read (fewer only at
    /// an error or the end of the image).
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Int {
        max(0, HostIO.readFully(fd, into: buffer, at: offset))
    }

    /// Writes `buffer` at `offset`; whether all of it was written.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) -> Bool {
        guard !options.readOnly else { return false }
        return (try? FileDescriptor(rawValue: fd).writeAll(toAbsoluteOffset: Int64(offset), buffer)) != nil
    }

    /// Makes every completed write durable (fdatasync), unless `cache=unsafe`.
    public func flush() -> Bool {
        guard !options.readOnly, options.cache != .unsafe else { return true }
        while fdatasync(fd) != 0 {
            if errno != EINTR { return false }
        }
        return true
    }

    /// Gives the range back to the host file system (a hole that reads zero).
    public func discard(at offset: UInt64, count: UInt64) -> Bool {
        guard !options.readOnly else { return false }
        guard !isBlockDevice else { return blockRangeIoctl(Self.blockDiscard, offset, count) }
        return chost_fallocate(fd, Int32(CHOST_PUNCH_HOLE), Int64(offset), Int64(count)) == 0
    }

    /// Makes the range read zero: a hole where `unmap` allows and the file
    /// system has them, else zeroed in place (FALLOC_FL_ZERO_RANGE, or
    /// zeros written where the file system has neither).
    public func writeZeroes(at offset: UInt64, count: UInt64, unmap: Bool) -> Bool {
        guard !options.readOnly else { return false }
        if isBlockDevice { return blockRangeIoctl(Self.blockZeroOut, offset, count) }
        if unmap, options.discard, chost_fallocate(fd, Int32(CHOST_PUNCH_HOLE), Int64(offset), Int64(count)) == 0 { return true }
        if chost_fallocate(fd, Int32(CHOST_ZERO_RANGE), Int64(offset), Int64(count)) == 0 { return true }
        return Self.zeros.withUnsafeBytes { zeros in
            var done: UInt64 = 0
            while done < count {
                let n = Int(min(UInt64(zeros.count), count - done))
                guard write(UnsafeRawBufferPointer(rebasing: zeros[0..<n]), at: offset + done) else { return false }
                done += UInt64(n)
            }
            return true
        }
    }

    static let zeros = [UInt8](repeating: 0, count: 64 << 10)
    /// BLKDISCARD and BLKZEROOUT (linux/fs.h): _IO(0x12, 119) and _IO(0x12, 127).
    static let blockDiscard: UInt = 0x1277
    static let blockZeroOut: UInt = 0x127F

    func blockRangeIoctl(_ request: UInt, _ offset: UInt64, _ count: UInt64) -> Bool {
        var range: (UInt64, UInt64) = (offset, count)
        return ioctl(fd, request, &range) == 0
    }
}

/// Why a disk cannot be used; `message` is the one line svmm prints.
public struct DiskError: Error, Sendable, Equatable {
    public enum Problem: Sendable, Equatable {
        case cannotOpen(errno: Int32)
        /// Neither a regular file nor a block device.
        case notADisk
        /// Another process holds a conflicting lock (a running svmm or QEMU).
        case locked(readOnly: Bool)
        /// cache=none on a file system without O_DIRECT.
        case noDirectIO
    }

    public let path: String
    public let problem: Problem

    public var message: String {
        switch problem {
        case .cannotOpen(let e):
            return "cannot open disk \(path): \(String(cString: strerror(e)))"
        case .notADisk:
            return "disk \(path) is neither a regular file nor a block device"
        case .noDirectIO:
            return "disk \(path): its file system does not support O_DIRECT, which cache=none needs (tmpfs before Linux 6.6); use cache=writeback"
        case .locked(let readOnly):
            return "disk \(path) is in use by another process (locked"
                + (readOnly ? " for writing); a read-only disk can be shared only with other readers" : "); a disk used read-write cannot be shared")
        }
    }
}
