import VMCore

/// `--disk PATH[,ro][,serial=ID][,cache=writeback|none|unsafe][,discard=on|off]`.
public enum DiskSpec {
    /// The options one `--disk` names; the error is the one line to print.
    public static func parse(_ spec: String) throws(DiskSpecError) -> DiskImage.Options {
        var parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let path = parts.removeFirst()
        guard !path.isEmpty else { throw DiskSpecError("--disk '\(spec)': no path") }
        var options = DiskImage.Options(path: path)
        var seen: Set<String> = []
        for part in parts {
            let (key, value) = part.firstIndex(of: "=").map { (String(part[..<$0]), String(part[part.index(after: $0)...])) } ?? (part, nil)
            guard seen.insert(key).inserted else { throw DiskSpecError("--disk '\(spec)': \(key) given twice") }
            switch (key, value) {
            case ("ro", nil):
                options.readOnly = true
            case ("serial", let id?):
                guard !id.isEmpty, id.utf8.count <= 20, id.utf8.allSatisfy({ $0 >= 0x21 && $0 < 0x7F }) else {
                    throw DiskSpecError("--disk '\(spec)': serial must be 1 to 20 printable ASCII characters without spaces")
                }
                options.serial = id
            case ("cache", let mode?):
                guard let cache = DiskImage.Cache(rawValue: mode) else {
                    throw DiskSpecError("--disk '\(spec)': cache must be \(DiskImage.Cache.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                options.cache = cache
            case ("discard", "on"?): options.discard = true
            case ("discard", "off"?): options.discard = false
            default:
                throw DiskSpecError("--disk '\(spec)': unknown option '\(part)' (ro, serial=ID, cache=writeback|none|unsafe, discard=on|off)")
            }
        }
        return options
    }
}

public struct DiskSpecError: Error, Sendable, Equatable {
    public let message: String
    init(_ message: String) { self.message = message }
}
