import VMCore
import CCompression
import Glibc

/// The compressed kernel inside a bzImage (boot protocol 2.08+:
/// payload_offset/payload_length), decompressed on the host with the system
/// libraries so svmm can enter the ELF inside through PVH and skip the
/// guest's own decompressor.
public enum KernelPayload {
    public enum Compression: String, Sendable, CaseIterable {
        case gzip, xz, bzip2, lzma, lzo, lz4, zstd
    }

    /// Compressions by magic (arch/x86/boot/compressed/Makefile's choices).
    public static func detect(_ b: ArraySlice<UInt8>) -> Compression? {
        Array(b).withUnsafeBytes { detect($0) }
    }

    public static func detect(_ b: UnsafeRawBufferPointer) -> Compression? {
        func starts(_ magic: [UInt8]) -> Bool { b.count >= magic.count && b.prefix(magic.count).elementsEqual(magic) }
        if starts([0x1F, 0x8B]) { return .gzip }
        if starts([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]) { return .xz }
        if starts([0x42, 0x5A, 0x68]) { return .bzip2 }
        if starts([0x5D, 0x00, 0x00]) { return .lzma }
        if starts([0x89, 0x4C, 0x5A, 0x4F]) { return .lzo }
        if starts([0x02, 0x21, 0x4C, 0x18]) { return .lz4 }
        if starts([0x28, 0xB5, 0x2F, 0xFD]) { return .zstd }
        return nil
    }

    public enum Failure: Error, Equatable, Sendable {
        case noPayload
        case unknownCompression
        case unsupported(Compression)
        case corrupt(Compression)

        /// Why the payload cannot be entered through PVH, for `--boot-protocol pvh` errors.
        public var reason: String {
            switch self {
            case .noPayload: return "its payload is empty"
            case .unknownCompression: return "its payload's compression is unknown"
            case .unsupported(let c): return "svmm cannot decompress \(c) payloads"
            case .corrupt(let c): return "its \(c) payload does not decompress"
            }
        }
    }

    /// The size a payload decompresses to. Linux's build appends it as 4
    /// little-endian bytes after every stream (gzip's own trailer ends with
    /// the same number).
    public static func uncompressedSize(_ payload: UnsafeRawBufferPointer) throws(Failure) -> (Compression, Int) {
        guard payload.count > 8 else { throw .noPayload }
        guard let kind = detect(payload) else { throw .unknownCompression }
        let tail = Int(LittleEndian.value(payload.suffix(4)))
        guard tail > 0, tail <= 1 << 30 else { throw .corrupt(kind) }
        return (kind, tail)
    }

    /// Decompresses a payload into `out`, which must be exactly its
    /// uncompressed size. The decoders work in place in the caller's buffers
    /// (guest RAM when booting), so svmm holds only their small state.
    public static func decompress(_ payload: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) throws(Failure) -> Compression {
        let (kind, size) = try uncompressedSize(payload)
        guard out.count == size else { throw .corrupt(kind) }
        // SAFETY: typed views of the caller's two buffers, for this call only;
        // every decoder below is bounded by src.count and dst.count (the C
        // libraries take both lengths and never write past the output's).
        let src = UnsafeBufferPointer(start: payload.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                      count: kind == .gzip ? payload.count : payload.count - 4)
        let dst = UnsafeMutableBufferPointer(start: out.baseAddress!.assumingMemoryBound(to: UInt8.self), count: out.count)
        let produced: Int?
        switch kind {
        case .gzip: produced = inflate(src, dst)
        case .xz, .lzma: produced = unxz(src, dst, alone: kind == .lzma)
        case .bzip2: produced = bunzip2(src, dst)
        case .lz4: produced = unlz4Legacy(src, dst)
        case .zstd: produced = unzstd(src, dst)
        case .lzo: throw .unsupported(.lzo)
        }
        guard let produced, produced == size else { throw .corrupt(kind) }
        return kind
    }

    /// Decompresses a payload into a new array.
    public static func decompress(_ payload: UnsafeRawBufferPointer) throws(Failure) -> (Compression, [UInt8]) {
        let (_, size) = try uncompressedSize(payload)
        var out = [UInt8](repeating: 0, count: size)
        let kind = try out.withUnsafeMutableBytes { dst in Result { () throws(Failure) in try decompress(payload, into: dst) } }.get()
        return (kind, out)
    }

    public static func decompress(_ payload: ArraySlice<UInt8>) throws(Failure) -> (Compression, [UInt8]) {
        try payload.withUnsafeBytes { src in Result { () throws(Failure) in try decompress(src) } }.get()
    }

    typealias Source = UnsafeBufferPointer<UInt8>
    typealias Destination = UnsafeMutableBufferPointer<UInt8>

    static func inflate(_ src: Source, _ dst: Destination) -> Int? {
        var s = z_stream()
        // inflateInit2 is a macro; 16 + MAX_WBITS selects the gzip wrapper.
        guard inflateInit2_(&s, 16 + 15, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return nil }
        defer { inflateEnd(&s) }
        // SAFETY: zlib only reads through next_in (its type is not const).
        s.next_in = UnsafeMutablePointer(mutating: src.baseAddress)
        s.avail_in = UInt32(src.count)
        s.next_out = dst.baseAddress
        s.avail_out = UInt32(dst.count)
        return CCompression.inflate(&s, Z_FINISH) == Z_STREAM_END ? Int(s.total_out) : nil
    }

    static func unxz(_ src: Source, _ dst: Destination, alone: Bool) -> Int? {
        var s = lzma_stream()
        let r = alone ? lzma_alone_decoder(&s, UInt64.max) : lzma_stream_decoder(&s, UInt64.max, 0)
        guard r == LZMA_OK else { return nil }
        defer { lzma_end(&s) }
        s.next_in = src.baseAddress
        s.avail_in = src.count
        s.next_out = dst.baseAddress
        s.avail_out = dst.count
        let end = lzma_code(&s, LZMA_FINISH)
        return end == LZMA_STREAM_END || (alone && end == LZMA_OK && s.avail_out == 0) ? Int(s.total_out) : nil
    }

    static func bunzip2(_ src: Source, _ dst: Destination) -> Int? {
        var length = UInt32(dst.count)
        // SAFETY: libbz2 writes at most `length` bytes to dst and only reads src (its type is not const).
        let r = BZ2_bzBuffToBuffDecompress(UnsafeMutableRawPointer(dst.baseAddress!).assumingMemoryBound(to: CChar.self), &length,
                                           UnsafeMutableRawPointer(mutating: src.baseAddress!).assumingMemoryBound(to: CChar.self),
                                           UInt32(src.count), 0, 0)
        return r == BZ_OK ? Int(length) : nil
    }

    /// The lz4 "legacy" frame the kernel uses: magic, then blocks of
    /// (compressed size, data), each decompressing to 8 MiB but the last.
    /// The blocks are independent of each other, so each is decompressed
    /// straight to its offset (8 MiB times its index), on up to 4 threads at
    /// once (a kernel is 6 or 7 blocks). A stream whose blocks are not all
    /// 8 MiB is decompressed again, in order.
    static func unlz4Legacy(_ src: Source, _ dst: Destination) -> Int? {
        guard let blocks = lz4LegacyBlocks(src) else { return nil }
        if unlz4InParallel(src, blocks, dst) { return dst.count }
        var done = 0
        for block in blocks {
            guard done < dst.count else { return nil }
            let n = unlz4Block(src, block, dst, done..<dst.count)
            guard n > 0 else { return nil }
            done += n
        }
        return done
    }

    /// Where each block's compressed bytes are; nil for a truncated stream.
    static func lz4LegacyBlocks(_ src: Source) -> [Range<Int>]? {
        var blocks: [Range<Int>] = []
        var p = 4
        while p + 4 <= src.count {
            let size = Int(src[p]) | Int(src[p + 1]) << 8 | Int(src[p + 2]) << 16 | Int(src[p + 3]) << 24
            p += 4
            if size == 0x184C_2102 { continue }          // another frame's magic
            guard size > 0, size <= src.count - p else { return nil }
            blocks.append(p..<p + size)
            p += size
        }
        return blocks
    }

    /// Decompresses block i to offset i * 8 MiB of dst, several blocks at
    /// once; false when the blocks do not decompress to 8 MiB each but the
    /// last (dst is then to be filled in order).
    static func unlz4InParallel(_ src: Source, _ blocks: [Range<Int>], _ dst: Destination) -> Bool {
        let blockSize = lz4LegacyBlockSize
        guard blocks.count > 1, blocks.count == (dst.count + blockSize - 1) / blockSize else { return false }
        let workers = min(blocks.count, 4, max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        let produced = UnsafeMutableBufferPointer<Int>.allocate(capacity: blocks.count)
        defer { produced.deallocate() }
        // SAFETY (@unchecked Sendable): the workers share the caller's
        // buffers, which outlive them (joined below); worker k writes only
        // blocks k, k+workers, ... of dst and their entries of produced.
        struct Shared: @unchecked Sendable { let src: Source, dst: Destination, produced: UnsafeMutableBufferPointer<Int> }
        let shared = Shared(src: src, dst: dst, produced: produced)
        let work = { @Sendable (k: Int) in
            for i in stride(from: k, to: blocks.count, by: workers) {
                let out = i * blockSize
                shared.produced[i] = unlz4Block(shared.src, blocks[i], shared.dst, out..<min(out + blockSize, shared.dst.count))
            }
        }
        let threads = (1..<workers).compactMap { k in try? startHostThread("lz4 decompression") { work(k) } }
        // Whatever share a thread that failed to start had is done here.
        for k in 0..<workers where k == 0 || k > threads.count { work(k) }
        for t in threads { pthread_join(t, nil) }
        return blocks.indices.allSatisfy { produced[$0] == min(blockSize, dst.count - $0 * blockSize) }
    }

    /// lz4's legacy block size (the lz4 tool's -l, as Linux's build runs it).
    static let lz4LegacyBlockSize = 8 << 20

    /// Decompresses one lz4 block of `src` into `out` of `dst`; the bytes
    /// produced, or a negative number for a corrupt block.
    static func unlz4Block(_ src: Source, _ block: Range<Int>, _ dst: Destination, _ out: Range<Int>) -> Int {
        // SAFETY: both ranges lie in their buffers (the callers take them from
        // the buffers' own sizes); LZ4 reads at most block.count bytes and
        // writes at most out.count.
        Int(LZ4_decompress_safe(UnsafeRawPointer(src.baseAddress! + block.lowerBound).assumingMemoryBound(to: CChar.self),
                                UnsafeMutableRawPointer(dst.baseAddress! + out.lowerBound).assumingMemoryBound(to: CChar.self),
                                Int32(block.count), Int32(out.count)))
    }

    static func unzstd(_ src: Source, _ dst: Destination) -> Int? {
        let n = ZSTD_decompress(dst.baseAddress, dst.count, src.baseAddress, src.count)
        return ZSTD_isError(n) != 0 ? nil : n
    }
}
