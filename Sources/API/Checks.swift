import Glibc
import VMCore

/// The checks a body passes before it changes the configuration: what svmm
/// can do of each field, and host paths that exist (nothing is created).
enum Checks {
    static func sameID(_ fromPath: String, _ fromBody: String) throws(HTTPError) {
        guard fromPath == fromBody else { throw HTTPError(status: 400, "The id from the path does not match the id from the body!") }
        guard !fromPath.isEmpty, fromPath.utf8.count <= 64,
              fromPath.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) else {
            throw HTTPError(status: 400, "Invalid ID: '\(fromPath.prefix(64))': 1 to 64 letters, digits, '_' or '-'.")
        }
    }

    static func readableFile(_ path: String, what: String) throws(HTTPError) {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw HTTPError(status: 400, "\(what) cannot be opened: \(path): \(String(cString: strerror(errno))).")
        }
        guard st.st_mode & S_IFMT == S_IFREG || st.st_mode & S_IFMT == S_IFBLK else {
            throw HTTPError(status: 400, "\(what) cannot be opened: \(path): not a regular file or block device.")
        }
        guard access(path, R_OK) == 0 else {
            throw HTTPError(status: 400, "\(what) cannot be opened: \(path): \(String(cString: strerror(errno))).")
        }
    }

    static func machine(_ m: MachineConfiguration) throws(HTTPError) {
        guard (1...32).contains(m.vcpu_count) else { throw HTTPError(status: 400, "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled, between 1 and 32.") }
        guard m.mem_size_mib >= 32, m.mem_size_mib <= 1 << 20 else {
            throw HTTPError(status: 400, "The memory size (MiB) is invalid: svmm needs 32 to 1048576 MiB.")
        }
        if m.smt == true { throw HTTPError(status: 400, "svmm does not emulate SMT: smt must be false.") }
        if let t = m.cpu_template, t != "None" { throw HTTPError(status: 400, "svmm has no CPU templates: cpu_template must be None.") }
        if let h = m.huge_pages, h != "None" { throw HTTPError(status: 400, "svmm backs guest RAM with 4 KiB pages: huge_pages must be None.") }
    }

    static func drive(_ d: Drive) throws(HTTPError) {
        if d.socket != nil { throw HTTPError(status: 400, "svmm has no vhost-user-block: give path_on_host, not socket.") }
        guard let path = d.path_on_host else { throw HTTPError(status: 400, "A drive needs path_on_host.") }
        try readableFile(path, what: "The drive file")
        if d.is_read_only != true, access(path, W_OK) != 0 {
            throw HTTPError(status: 400, "The drive file cannot be opened for writing: \(path): \(String(cString: strerror(errno))) (is_read_only: true opens it read-only).")
        }
        if let c = d.cache_type, c != "Unsafe", c != "Writeback" {
            throw HTTPError(status: 400, "An error occurred when deserializing the json body of a request: unknown variant `\(c)`, expected `Unsafe` or `Writeback`.")
        }
        if let e = d.io_engine, e != "Sync", e != "Async" {
            throw HTTPError(status: 400, "An error occurred when deserializing the json body of a request: unknown variant `\(e)`, expected `Sync` or `Async`.")
        }
        if d.partuuid != nil, !d.is_root_device { throw HTTPError(status: 400, "partuuid is only for the root device.") }
        try noRateLimiter(d.rate_limiter, "rate_limiter")
    }

    static func interface(_ n: NetworkInterface) throws(HTTPError) {
        guard !n.host_dev_name.isEmpty, n.host_dev_name.utf8.count <= 15, !n.host_dev_name.contains("/") else {
            throw HTTPError(status: 400, "Invalid host_dev_name '\(n.host_dev_name.prefix(32))': a TAP's name, 1 to 15 bytes.")
        }
        if let mac = n.guest_mac, Tap.parseMAC(mac) == nil {
            throw HTTPError(status: 400, "Invalid guest_mac '\(mac.prefix(32))': six hex bytes, e.g. 06:00:AC:10:00:02.")
        }
        if n.mtu != nil { throw HTTPError(status: 400, "svmm advertises the TAP's own MTU: set it on \(n.host_dev_name) and leave mtu out.") }
        try noRateLimiter(n.rx_rate_limiter, "rx_rate_limiter")
        try noRateLimiter(n.tx_rate_limiter, "tx_rate_limiter")
    }

    static func noRateLimiter(_ value: JSONPresence?, _ name: String) throws(HTTPError) {
        if value != nil { throw HTTPError(status: 400, "svmm has no rate limiters: \(name) must be absent or null.") }
    }

    /// Opens an existing file or named pipe to append to (never creates one).
    static func openForAppending(_ path: String, what: String) throws(HTTPError) -> Int32 {
        let fd = open(path, O_WRONLY | O_APPEND | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw HTTPError(status: 400, "\(what) cannot be opened: \(path): \(String(cString: strerror(errno))).") }
        return fd
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return false }
            done += n
        }
        return true
    }
}
