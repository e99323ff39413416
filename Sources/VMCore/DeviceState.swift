import FoundationEssentials

/// A device whose guest-visible state a snapshot carries (docs/snapshot.md):
/// registers, queues, what the driver negotiated. Saved from a paused
/// machine, restored into a machine built the same way before it starts.
public protocol SnapshotDevice: AnyObject, Sendable {
    /// The state, as bytes for the snapshot's `DEVS` section.
    func saveState() throws(DeviceStateError) -> [UInt8]
    /// Sets the state `saveState` wrote; a state this device cannot take is
    /// refused with what is wrong, and nothing is half set.
    func restoreState(_ bytes: [UInt8]) throws(DeviceStateError)
}

/// Why a device's state was not saved or restored.
public struct DeviceStateError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Device states are JSON documents of each device's own Codable struct:
/// readable, and refused field by field when they do not fit.
public enum DeviceStateCoding {
    public static func encode<T: Encodable>(_ value: T) throws(DeviceStateError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do { return Array(try encoder.encode(value)) } catch { throw DeviceStateError("cannot encode the state: \(error)") }
    }

    public static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], device: String) throws(DeviceStateError) -> T {
        do { return try JSONDecoder().decode(type, from: Data(bytes)) } catch {
            throw DeviceStateError("\(device): the saved state does not fit this device (\(Self.reason(error)))")
        }
    }

    /// The decoder's complaint in a few words (which key, what kind of value).
    static func reason(_ error: Error) -> String {
        switch error as? DecodingError {
        case let .keyNotFound(key, _): return "no \(key.stringValue)"
        case let .typeMismatch(_, context), let .valueNotFound(_, context), let .dataCorrupted(context):
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? "not a JSON object of its fields" : "\(path): a value of the wrong kind"
        default: return "not a JSON object of its fields"
        }
    }
}

extension PCIHostBridge: SnapshotDevice {
    struct SavedState: Codable { var address: UInt32 }

    public func saveState() throws(DeviceStateError) -> [UInt8] {
        try DeviceStateCoding.encode(SavedState(address: address.withLock { $0 }))
    }

    public func restoreState(_ bytes: [UInt8]) throws(DeviceStateError) {
        let s = try DeviceStateCoding.decode(SavedState.self, bytes, device: "pci-config")
        address.withLock { $0 = s.address }
    }
}
