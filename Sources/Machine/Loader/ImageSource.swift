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
    /// Bytes owned elsewhere (a scratch area of guest RAM); used when fd < 0 and bytes is empty.
    private let raw: UnsafeRawBufferPointer?
    public let path: String
    /// The image's size in bytes.
    public let count: Int

    public init(_ bytes: [UInt8], path: String = "image") {
        self.fd = -1
        self.bytes = bytes
        self.raw = nil
        self.path = path
        self.count = bytes.count
    }

    /// Bytes that stay owned by the caller and must outlive this source.
    init(borrowing raw: UnsafeRawBufferPointer, path: String) {
        self.fd = -1
        self.bytes = []
        self.raw = raw
        self.path = path
        self.count = raw.count
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
        self.raw = nil
        self.path = path
        self.count = Int(st.st_size)
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    /// The bytes in `range`, clipped to the image (for headers: small reads).
    public func read(_ range: Range<Int>) -> [UInt8] {
        let r = range.clamped(to: 0..<count)
        if let raw { return Array(raw[r]) }
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
        let dst = try memory.buffer(at: address, count: range.count)
        if let raw {
            dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[range]))
            return
        }
        guard fd >= 0 else {
            dst.copyBytes(from: bytes[range])
            return
        }
        let got = readFully(into: dst, at: range.lowerBound)
        if got < 0 { throw LoaderError.readFailed(path: path, errno: Int32(-got)) }
        if got < range.count { throw LoaderError.truncated(path: path, needed: range.upperBound, actual: range.lowerBound + got) }
    }

    /// Fills `buffer` from file offset `offset`; the bytes read, or -errno.
    private func readFully(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, min(buffer.count - done, 1 << 30), off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                return -Int(errno)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }
}

/// Why an image file could not be opened (an errno).
public struct ImageOpenError: Error, Sendable {
    public let errno: Int32
    public var reason: String { String(cString: strerror(errno)) }
}
