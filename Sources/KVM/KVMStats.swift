import SystemPackage
import CKVM
import Glibc

/// KVM's own statistics for one VM or vCPU, read from its binary stats file
/// descriptor (`KVM_GET_STATS_FD`, Documentation/virt/kvm/api.rst §4.133).
///
/// The descriptors are read once and generically: whatever this kernel
/// exports (name, type, unit, size) is what svmm samples, so statistics a
/// newer kernel adds appear without a change here.
public final class KVMStats: Sendable {
    /// One statistic as the kernel describes it.
    public struct Descriptor: Sendable, Equatable {
        public enum Kind: String, Sendable {
            case cumulative, instant, peak, linearHistogram = "linear_hist", logHistogram = "log_hist", unknown
        }
        public enum Unit: String, Sendable {
            case none, bytes, seconds, cycles, boolean, unknown
        }
        public let name: String
        public let kind: Kind
        public let unit: Unit
        /// The value is `raw × base^exponent` in `unit` (base 10 or 2).
        public let exponent: Int16
        public let base: Int
        /// Number of UInt64 values (1, or the bucket count of a histogram).
        public let size: Int
        /// Byte offset of the first value from the data block.
        public let offset: Int
        /// Index of the first value in `read()`'s flat array.
        public let index: Int

        /// The value's name in a flat list: the stat's name, with the bucket
        /// index for histograms ("halt_wait_hist[3]").
        public func valueName(_ i: Int) -> String { size == 1 ? name : "\(name)[\(i)]" }
    }

    public let fd: Int32
    /// What the stats belong to ("vm", "vcpu0", …), from the file's id string.
    public let id: String
    public let descriptors: [Descriptor]
    /// Total number of UInt64 values (the sum of the descriptors' sizes).
    public let valueCount: Int
    private let dataOffset: Int
    private let dataSize: Int
    /// Names of all values in `read()` order.
    public let valueNames: [String]

    /// Takes ownership of a stats fd and reads its header and descriptors.
    public init(fd: Int32) throws(KVMError) {
        self.fd = fd
        // struct kvm_stats_header: flags, name_size, num_desc (u32 each), then
        // id_offset, desc_offset, data_offset (u32 each).
        var header = [UInt32](repeating: 0, count: 6)
        guard Self.readFully(fd, into: &header, at: 0) else {
            let e = errno
            close(fd)
            throw KVMError("reading the KVM stats header", errno: e)
        }
        let nameSize = Int(header[1]), count = Int(header[2])
        let idOffset = Int(header[3]), descOffset = Int(header[4])
        dataOffset = Int(header[5])
        var idBytes = [UInt8](repeating: 0, count: nameSize)
        _ = Self.readFully(fd, into: &idBytes, at: idOffset)
        id = String(decoding: idBytes.prefix { $0 != 0 }, as: UTF8.self)

        // struct kvm_stats_desc: flags u32, exponent s16, size u16, offset u32,
        // bucket_size u32, name[name_size].
        let descSize = 16 + nameSize
        var raw = [UInt8](repeating: 0, count: descSize * count)
        guard count == 0 || Self.readFully(fd, into: &raw, at: descOffset) else {
            let e = errno
            close(fd)
            throw KVMError("reading the KVM stats descriptors", errno: e)
        }
        var descriptors: [Descriptor] = []
        var index = 0, end = 0
        for i in 0..<count {
            let d = raw[(i * descSize)..<((i + 1) * descSize)]
            func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(d[d.startIndex + at + $1]) << (8 * $1) } }
            func u16(_ at: Int) -> UInt16 { UInt16(d[d.startIndex + at]) | UInt16(d[d.startIndex + at + 1]) << 8 }
            let flags = u32(0)
            let kind: Descriptor.Kind = switch flags & 0xF {
            case 0: .cumulative
            case 1: .instant
            case 2: .peak
            case 3: .linearHistogram
            case 4: .logHistogram
            default: .unknown
            }
            let unit: Descriptor.Unit = switch flags & 0xF0 {
            case 0x00: .none
            case 0x10: .bytes
            case 0x20: .seconds
            case 0x30: .cycles
            case 0x40: .boolean
            default: .unknown
            }
            let nameBytes = d.dropFirst(16).prefix { $0 != 0 }
            let size = Int(u16(6)), offset = Int(u32(8))
            descriptors.append(Descriptor(
                name: String(decoding: nameBytes, as: UTF8.self), kind: kind, unit: unit,
                exponent: Int16(bitPattern: u16(4)), base: flags & 0xF00 == 0x100 ? 2 : 10,
                size: size, offset: offset, index: index))
            index += size
            end = max(end, offset + size * 8)
        }
        self.descriptors = descriptors
        valueCount = index
        dataSize = end
        valueNames = descriptors.flatMap { d in (0..<d.size).map { d.valueName($0) } }
    }

    deinit { close(fd) }

    /// Every value, in descriptor order (one pread of the data block).
    public func read() -> [UInt64] {
        var block = [UInt64](repeating: 0, count: (dataSize + 7) / 8)
        guard Self.readFully(fd, into: &block, at: dataOffset) else { return [UInt64](repeating: 0, count: valueCount) }
        var values = [UInt64](repeating: 0, count: valueCount)
        for d in descriptors where d.offset % 8 == 0 {
            for i in 0..<d.size { values[d.index + i] = block[d.offset / 8 + i] }
        }
        return values
    }

    /// The current value of one named single-value statistic.
    public func value(_ name: String) -> UInt64? {
        guard let d = descriptors.first(where: { $0.name == name && $0.size == 1 }) else { return nil }
        return read()[d.index]
    }

    static func readFully<T>(_ fd: Int32, into buffer: inout [T], at offset: Int) -> Bool {
        buffer.withUnsafeMutableBytes { b in
            let file = FileDescriptor(rawValue: fd)
            var done = 0
            while done < b.count {
                guard let n = try? file.read(fromAbsoluteOffset: Int64(offset + done), into: UnsafeMutableRawBufferPointer(rebasing: b[done...])),
                      n > 0 else { return false }
                done += n
            }
            return true
        }
    }
}

extension VirtualMachine {
    /// The VM's statistics file (KVM_CAP_BINARY_STATS_FD).
    public func stats() throws(KVMError) -> KVMStats {
        try KVMStats(fd: KVMError.check("KVM_GET_STATS_FD(vm)", ckvm_get_stats_fd(fd)))
    }
}

extension VCPU {
    /// This vCPU's statistics file.
    public func stats() throws(KVMError) -> KVMStats {
        try KVMStats(fd: KVMError.check("KVM_GET_STATS_FD(vcpu \(id))", ckvm_get_stats_fd(fd)))
    }
}
