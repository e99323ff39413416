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

    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { return nil }
            if n == 0 { return result }
            result.append(contentsOf: chunk[0..<n])
        }
    }
}
