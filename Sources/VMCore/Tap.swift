import CHost
import Glibc

/// An existing TAP device behind a virtio-net device, attached with a
/// virtio-net header (`IFF_VNET_HDR`, 12 bytes: virtio 1.2's
/// `virtio_net_hdr` with `num_buffers`) on every frame read or written, one
/// non-blocking file descriptor per queue pair (`IFF_MULTI_QUEUE` when the
/// TAP was created with multi-queue support).
///
/// The TAP must exist (as Firecracker's `host_dev_name`): svmm never creates
/// one, so a mistyped name is an error, not a new device. The queues go
/// with the file descriptors.
public final class Tap: Sendable {
    public let name: String
    /// One per queue pair, non-blocking.
    public let fds: [Int32]
    /// The TAP's MTU (the guest is told it through `VIRTIO_NET_F_MTU`).
    public let mtu: Int
    /// More queues were asked for than one, and the TAP was created without
    /// multi-queue support: it has one.
    public let singleQueueOnly: Bool

    /// The virtio-net header on every frame (virtio 1.2 §5.1.6).
    public static let headerSize = 12

    /// TUNSETOFFLOAD's flags (<linux/if_tun.h> TUN_F_*): the reader accepts
    /// partial checksums, TCP segmentation over IPv4, over IPv6.
    public enum Offload {
        public static let checksum: UInt32 = 0x01, tso4: UInt32 = 0x02, tso6: UInt32 = 0x04
    }

    /// Attaches `queues` queues of the TAP `name`; on any failure nothing
    /// stays attached.
    public init(name: String, queues: Int) throws(TapError) {
        precondition(queues >= 1)
        self.name = name
        guard if_nametoindex(name) != 0 else { throw TapError(name, .missing) }
        var multiQueue = queues > 1
        var first = chost_tap_attach(name, multiQueue ? 1 : 0, Int32(Self.headerSize))
        if first == -EINVAL {
            // The TAP's multi-queue flag is fixed when it is made; attach as it was made.
            multiQueue.toggle()
            first = chost_tap_attach(name, multiQueue ? 1 : 0, Int32(Self.headerSize))
        }
        guard first >= 0 else { throw TapError(name, TapError.Problem(errno: -first)) }
        var fds = [first]
        if multiQueue {
            for _ in 1..<queues {
                let fd = chost_tap_attach(name, 1, Int32(Self.headerSize))
                guard fd >= 0 else {
                    for f in fds { close(f) }
                    throw TapError(name, TapError.Problem(errno: -fd))
                }
                fds.append(fd)
            }
        }
        self.fds = fds
        singleQueueOnly = queues > 1 && !multiQueue
        let m = chost_if_mtu(name)
        mtu = m > 0 ? Int(m) : 1500
    }

    /// TUNSETOFFLOAD on every queue: which offloads (`Offload`) the
    /// guest accepts in the frames it receives.
    @discardableResult
    public func setOffloads(_ flags: UInt32) -> Bool {
        fds.allSatisfy { chost_tap_set_offload($0, flags) == 0 }
    }

    /// Attaches the first `count` queues and detaches the rest
    /// (TUNSETQUEUE): the TAP then spreads flows over those the guest reads.
    /// A single-queue TAP has nothing to do.
    public func setActiveQueues(_ count: Int) {
        guard fds.count > 1 else { return }
        for (i, fd) in fds.enumerated() { _ = chost_tap_set_queue(fd, i < count ? 1 : 0) }
    }

    deinit { for fd in fds { close(fd) } }

    /// The guest's MAC address when none is given: stable for a TAP name
    /// (FNV-1a of it), unicast and locally administered (02:xx:xx:xx:xx:xx).
    /// "02:ab:..": six hex bytes separated by colons; nil for anything else.
    public static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var bytes: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            bytes.append(b)
        }
        return bytes
    }

    public static func defaultMAC(for name: String) -> [UInt8] {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return [0x02] + (0..<5).map { UInt8(truncatingIfNeeded: h >> (8 * UInt64($0))) }
    }
}

public struct TapError: Error, Sendable, Equatable {
    public enum Problem: Sendable, Equatable {
        /// No network interface of that name (in svmm's network namespace).
        case missing
        /// An interface of that name that is not a TAP (a TUN, or no tun device at all).
        case notATap
        /// Its one queue is attached to another process.
        case busy
        /// The TAP belongs to another user or group, or /dev/net/tun is not ours to open.
        case permission
        case other(Int32)

        init(errno e: Int32) {
            switch e {
            case EINVAL: self = .notATap
            case EBUSY: self = .busy
            case EPERM, EACCES: self = .permission
            default: self = .other(e)
            }
        }
    }

    public let name: String
    public let problem: Problem

    init(_ name: String, _ problem: Problem) {
        self.name = name
        self.problem = problem
    }

    /// The one line to print.
    public var message: String {
        switch problem {
        case .missing: return "TAP \(name): no such network interface (svmm attaches to an existing TAP; create it with `ip tuntap add \(name) mode tap`)"
        case .notATap: return "TAP \(name): the interface is not a TAP device"
        case .busy: return "TAP \(name) is in use by another process (a TAP without multi-queue support has one queue)"
        case .permission: return "TAP \(name): permission denied (the TAP's owner, or access to /dev/net/tun)"
        case .other(let e): return "TAP \(name): \(String(cString: strerror(e)))"
        }
    }
}
