import CHost
import Glibc
import SystemPackage

/// One vhost-net instance (`/dev/vhost-net`): the host kernel moves frames
/// between a TAP queue and a queue pair's two vrings (0 receive, 1
/// transmit) in guest RAM, woken by the queues' notification eventfds and
/// interrupting through their irqfds, with no exit to svmm.
public final class VhostNet: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): `fd` is immutable; the vhost ioctls are
    // made by whoever holds the device (the transport's thread at DRIVER_OK,
    // reset and pause).
    public let fd: Int32

    /// Feature bits vhost-net serves itself (the rest stay with svmm):
    /// VERSION_1, EVENT_IDX, INDIRECT_DESC, MRG_RXBUF.
    public static let ringFeatures: UInt64 = 1 << 32 | 1 << 29 | 1 << 28 | 1 << 15

    /// Opens `/dev/vhost-net` and takes ownership of it.
    public init() throws(HostError) {
        let r = chost_vhost_net_open()
        guard r >= 0 else { throw HostError("open /dev/vhost-net", Errno(rawValue: -r)) }
        fd = r
    }

    deinit { close(fd) }

    public func features() throws(HostError) -> UInt64 {
        var f: UInt64 = 0
        try Self.check("VHOST_GET_FEATURES", chost_vhost_get_features(fd, &f))
        return f
    }

    public func setFeatures(_ features: UInt64) throws(HostError) {
        try Self.check("VHOST_SET_FEATURES", chost_vhost_set_features(fd, features))
    }

    /// VHOST_SET_MEM_TABLE: every region of guest RAM at its host mapping.
    public func setMemory(_ memory: GuestMemory) throws(HostError) {
        var table: [UInt64] = []
        for r in memory.regions {
            // SAFETY: the host address goes to the kernel, which uses it while
            // this vhost instance lives; svmm closes it (reset, or the process's
            // end) while the mapping still exists (GuestMemory outlives the devices).
            guard let v = try? memory.ioVector(at: r.guestAddress, count: Int(r.size)) else { continue }
            table += [r.guestAddress, r.size, UInt64(UInt(bitPattern: v.iov_base))]
        }
        try Self.check("VHOST_SET_MEM_TABLE", chost_vhost_set_mem_table(fd, table, Int32(table.count / 3)))
    }

    /// Vring `index` of `size` entries at host addresses, taking from
    /// available index `base`, woken by `kick`, interrupting through `call`.
    public func setVring(_ index: Int, size: UInt16, descriptors: UInt64, available: UInt64, used: UInt64,
                         base: UInt16, kick: Int32, call: Int32) throws(HostError) {
        try Self.check("VHOST_SET_VRING_*", chost_vhost_set_vring(fd, UInt32(index), UInt32(size), descriptors, available, used,
                                                                   UInt32(base), kick, call))
    }

    /// The TAP queue behind vring `index`, or -1: none (the ring stops).
    public func setBackend(_ index: Int, fd backend: Int32) throws(HostError) {
        try Self.check("VHOST_NET_SET_BACKEND", chost_vhost_net_set_backend(fd, UInt32(index), backend))
    }

    static func check(_ operation: String, _ result: Int32) throws(HostError) {
        guard result >= 0 else { throw HostError(operation, Errno(rawValue: -result)) }
    }
}
