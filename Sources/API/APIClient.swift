import Glibc

/// One request to an API socket and its answer (`svmm ctl`, tests).
public enum APIClient {
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// Connects to the socket at `path`.
    public static func connect(_ path: String) throws(Failure) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        guard let rc = UnixListener.withAddress(path, { Glibc.connect(fd, $0, $1) }) else {
            close(fd)
            throw Failure(description: "path too long for a Unix socket")
        }
        guard rc == 0 else { let e = errno; close(fd); throw Failure(description: "cannot connect: \(String(cString: strerror(e)))") }
        return fd
    }

    /// The process ID of the server at the other end of a connected socket.
    public static func peerPID(_ fd: Int32) -> pid_t? {
        // struct ucred: pid, uid, gid (three 32-bit fields; Glibc hides the type behind _GNU_SOURCE).
        var cred: (pid_t, uid_t, gid_t) = (0, 0, 0)
        var size = socklen_t(MemoryLayout<(pid_t, uid_t, gid_t)>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) == 0 else { return nil }
        return cred.0
    }

    /// Sends one request (closing the connection after it) and reads the answer.
    public static func request(socket path: String, method: String, path target: String, body: String?) throws(Failure) -> (status: Int, body: [UInt8]) {
        let fd = try connect(path)
        defer { close(fd) }
        var head = "\(method) \(target) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        let payload = Array((body ?? "").utf8)
        if body != nil { head += "Content-Type: application/json\r\nContent-Length: \(payload.count)\r\n" }
        let bytes = Array((head + "\r\n").utf8) + payload
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: "the connection closed while sending") }
            done += n
        }
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n < 0, errno == EINTR { continue }
            if n <= 0 { break }
            answer += chunk[0..<n]
        }
        guard let headEnd = HTTPParser.find(HTTPParser.crlfcrlf, in: answer[...]),
              let statusLine = String(validating: answer[0..<headEnd], as: UTF8.self)?.split(separator: "\r\n").first,
              let status = statusLine.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else {
            throw Failure(description: "not an HTTP answer")
        }
        return (status, Array(answer[(headEnd + 4)...]))
    }
}
