import VMCore
import Glibc

/// A kernel or initrd image. A file is read piece by piece with `pread`,
/// straight into the guest RAM it is loaded to, so svmm never holds a copy of
/// it in its own memory; in-memory bytes serve tests and the host-decompressed
/// kernel of the PVH fast path.
public final class ImageSource: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): fd and bytes are immutable after init;
    // pread takes no file position, so concurrent readers do not interfere.
    private let fd: Int32
    private let bytes: [UInt8]
    /// Bytes in a scratch area of guest RAM (the PVH fast path's decompressed
    /// kernel); used when fd < 0 and bytes is empty.
    private let guest: (memory: GuestMemory, address: UInt64)?
    public let path: String
    /// The image's size in bytes.
    public let count: Int

    public init(_ bytes: [UInt8], path: String = "image") {
        self.fd = -1
        self.bytes = bytes
        self.guest = nil
        self.path = path
        self.count = bytes.count
    }

    /// `count` bytes of guest RAM at `address`, read through `memory` on
    /// each use (no pointer into guest RAM is kept).
    init(guest memory: GuestMemory, at address: UInt64, count: Int, path: String) {
        self.fd = -1
        self.bytes = []
        self.guest = (memory, address)
        self.path = path
        self.count = count
    }

    /// Opens a file for reading; fails with errno (EISDIR for a directory).
    public init(path: String) throws(ImageOpenError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ImageOpenError(errno: errno) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = errno; close(fd); throw ImageOpenError(errno: e) }
        guard st.st_mode & S_IFMT != S_IFDIR else { close(fd); throw ImageOpenError(errno: EISDIR) }
        self.fd = fd
        self.bytes = []
        self.guest = nil
        self.path = path
        self.count = Int(st.st_size)
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    /// The bytes in `range`, clipped to the image (for headers: small reads).
    public func read(_ range: Range<Int>) -> [UInt8] {
        let r = range.clamped(to: 0..<count)
        if let guest { return (try? guest.memory.read(at: guest.address + UInt64(r.lowerBound), count: r.count)) ?? [] }
        guard fd >= 0 else { return Array(bytes[r]) }
        var out = [UInt8](repeating: 0, count: r.count)
        let got = out.withUnsafeMutableBytes { readFully(into: $0, at: r.lowerBound) }
        out.removeSubrange(max(0, got)...)
        return out
    }

    /// Copies `range` of the image into guest RAM at `address`, checked
    /// against the guest's RAM first; a file is read directly into it.
    func copy(_ range: Range<Int>, into memory: GuestMemory, at address: UInt64) throws {
        guard range.lowerBound >= 0, range.upperBound <= count else {
            throw LoaderError.truncated(path: path, needed: range.upperBound, actual: count)
        }
        if let guest {
            return try guest.memory.copy(from: guest.address + UInt64(range.lowerBound), to: address, count: range.count)
        }
        guard fd >= 0 else { return try memory.write(bytes[range], at: address) }
        let got = try memory.withBytes(at: address, count: range.count) { readFully(into: $0, at: range.lowerBound) }
        if got < 0 { throw LoaderError.readFailed(path: path, errno: Int32(-got)) }
        if got < range.count { throw LoaderError.truncated(path: path, needed: range.upperBound, actual: range.lowerBound + got) }
    }

    /// Fills `buffer` from file offset `offset`; the bytes read, or -errno.
    private func readFully(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        HostIO.readFully(fd, into: buffer, at: UInt64(offset))
    }
}

/// Why an image file could not be opened (an errno).
public struct ImageOpenError: Error, Sendable {
    public let errno: Int32
    public var reason: String { String(cString: strerror(errno)) }
}
