import Stats
import VMCore
import Glibc

/// Finds the guest programs built from `Firmware/` (by `make -C Firmware`).
///
/// Looks in `$SVMM_FIRMWARE_DIR`, then in `Firmware/build` of the nearest
/// directory above the svmm executable (a checkout's `.build/…/svmm`).
enum FirmwareLocation {
    static func path(of name: String) -> String? {
        let file = name.hasSuffix(".bin") ? name : name + ".bin"
        if let dir = getenv("SVMM_FIRMWARE_DIR") {
            let p = String(cString: dir) + "/" + file
            return access(p, R_OK) == 0 ? p : nil
        }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        var dir = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        while let slash = dir.lastIndex(of: "/"), slash != dir.startIndex {
            dir = String(dir[..<slash])
            let p = dir + "/Firmware/build/" + file
            if access(p, R_OK) == 0 { return p }
        }
        return nil
    }

    static func load(_ nameOrPath: String) -> [UInt8] {
        let path = nameOrPath.contains("/") ? nameOrPath : (Self.path(of: nameOrPath) ?? nameOrPath)
        guard let bytes = readFile(path) else {
            fail("cannot read firmware '\(path)': \(String(cString: strerror(errno))); build it with 'make -C Firmware' or set SVMM_FIRMWARE_DIR", .noInput)
        }
        return bytes
    }

    /// The whole file, read into one buffer of its exact size (sets errno on failure).
    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        if st.st_mode & S_IFMT == S_IFDIR { errno = EISDIR; return nil }
        var result = [UInt8](repeating: 0, count: Int(st.st_size))
        var filled = 0
        while filled < result.count {
            let n = result.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, $0.count - filled) }
            if n < 0 { return nil }
            if n == 0 { break }
            filled += n
        }
        result.removeSubrange(filled...)
        return result
    }
}
