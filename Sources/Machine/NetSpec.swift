import VMCore
import Virtio

/// `--net tap=NAME[,mac=MAC][,queues=N][,vhost=on|off]`.
public enum NetSpec {
    /// At most this many queue pairs per interface (virtio-net's limit in svmm).
    public static let maxQueues = VirtioNet.maxPairs

    public struct Options: Sendable, Equatable {
        public var tap: String
        /// Nil: `Tap.defaultMAC(for: tap)`.
        public var mac: [UInt8]?
        /// Queue pairs; nil: one per vCPU.
        public var queues: Int?
        public var vhost = false

        public init(tap: String, mac: [UInt8]? = nil, queues: Int? = nil, vhost: Bool = false) {
            self.tap = tap
            self.mac = mac
            self.queues = queues
            self.vhost = vhost
        }
    }

    /// The options one `--net` names; the error is the one line to print.
    public static func parse(_ spec: String) throws(NetSpecError) -> Options {
        var tap: String?
        var options = Options(tap: "")
        var seen: Set<String> = []
        for part in spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
            guard let eq = part.firstIndex(of: "=") else {
                throw NetSpecError("--net '\(spec)': '\(part)' is not KEY=VALUE (tap=NAME, mac=MAC, queues=N, vhost=on|off)")
            }
            let key = String(part[..<eq]), value = String(part[part.index(after: eq)...])
            guard seen.insert(key).inserted else { throw NetSpecError("--net '\(spec)': \(key) given twice") }
            switch key {
            case "tap":
                // IFNAMSIZ is 16 with the terminating zero; '/' and blanks are not allowed in a name.
                guard !value.isEmpty, value.utf8.count <= 15, value != ".", value != "..",
                      value.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":") }) else {
                    throw NetSpecError("--net '\(spec)': tap must be an interface name of 1 to 15 characters")
                }
                tap = value
            case "mac":
                guard let mac = Tap.parseMAC(value) else { throw NetSpecError("--net '\(spec)': mac must be six hex bytes, e.g. 02:00:00:00:00:01") }
                guard mac[0] & 1 == 0 else { throw NetSpecError("--net '\(spec)': mac \(value) is a multicast address") }
                guard mac.contains(where: { $0 != 0 }) else { throw NetSpecError("--net '\(spec)': mac \(value) is all zeros") }
                options.mac = mac
            case "queues":
                guard let n = Int(value), (1...maxQueues).contains(n) else { throw NetSpecError("--net '\(spec)': queues must be 1 to \(maxQueues)") }
                options.queues = n
            case "vhost":
                switch value {
                case "on": options.vhost = true
                case "off": options.vhost = false
                default: throw NetSpecError("--net '\(spec)': vhost must be on or off")
                }
            default:
                throw NetSpecError("--net '\(spec)': unknown option '\(key)' (tap=NAME, mac=MAC, queues=N, vhost=on|off)")
            }
        }
        guard let tap else { throw NetSpecError("--net '\(spec)': no tap=NAME") }
        options.tap = tap
        return options
    }
}

public struct NetSpecError: Error, Sendable, Equatable {
    public let message: String
    init(_ message: String) { self.message = message }
}

/// One `--net`, opened: its TAP (with a queue per pair), the guest's MAC, and whether vhost-net carries the data.
public struct NetInterface: Sendable {
    public let tap: Tap
    public let mac: [UInt8]
    /// The data path in the host kernel (vhost-net).
    public let vhost: Bool

    public init(tap: Tap, mac: [UInt8], vhost: Bool = false) {
        self.tap = tap
        self.mac = mac
        self.vhost = vhost
    }
}
