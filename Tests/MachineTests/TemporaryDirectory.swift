import Foundation

/// Runs `body` in a fresh directory under the system temporary directory and
/// removes the directory afterwards.
func withTemporaryDirectory<R>(_ prefix: String, _ body: (URL) throws -> R) throws -> R {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    return try body(dir)
}
