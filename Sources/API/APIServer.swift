import Glibc
import Synchronization
import VMCore

/// A listening Unix socket at a path. An old socket there is replaced; any
/// other file is left alone and refused.
public enum UnixListener {
    public struct SetupError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// The longest path a Unix socket address holds.
    public static let maxPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    /// Calls `body` (bind or connect) with the socket address of `path`;
    /// nil, without calling it, when the path is too long.
    public static func withAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32? {
        let bytes = Array(path.utf8)
        guard bytes.count <= maxPathBytes else { return nil }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        // SAFETY: sockaddr_un begins with the sockaddr header; the kernel reads the length given.
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// `what` names the option in the error lines (e.g. "--api-sock PATH").
    public static func bind(path: String, what: String) throws(SetupError) -> Int32 {
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw SetupError(description: "\(what) \(path): a file that is not a socket is there; not replacing it")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SetupError(description: "\(what): socket: \(String(cString: strerror(errno)))") }
        guard let bound = withAddress(path, { Glibc.bind(fd, $0, $1) }) else {
            close(fd)
            throw SetupError(description: "\(what) \(path): path longer than a Unix socket allows (\(maxPathBytes) bytes)")
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let e = errno
            close(fd)
            throw SetupError(description: "\(what) \(path): \(String(cString: strerror(e)))")
        }
        return fd
    }
}

/// Serves HTTP/1.1 requests on a listening socket from one thread: every
/// client in one poll set, each with its own buffer, so a client that sends
/// nothing, or half a request, or goes away mid-request holds up no other
/// (and not the guest: the vCPUs never wait on this thread). Requests are
/// answered in arrival order, one at a time.
public final class APIServer: Sendable {
    public static let maxClients = 32
    let listener: Int32
    let path: String
    let maxBodyBytes: Int
    let handler: @Sendable (HTTPRequest) -> HTTPResponse
    /// Written to stop the loop.
    private let wake: (read: Int32, write: Int32)
    private let thread = Mutex<pthread_t?>(nil)

    public init(listener: Int32, path: String, maxBodyBytes: Int = HTTPParser.defaultMaxBodyBytes,
                handler: @escaping @Sendable (HTTPRequest) -> HTTPResponse) {
        self.listener = listener
        self.path = path
        self.maxBodyBytes = maxBodyBytes
        self.handler = handler
        var fds: [Int32] = [0, 0]
        _ = pipe(&fds)
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        wake = (fds[0], fds[1])
    }

    /// Serves on a new thread until `stop()`.
    public func start() throws(HostError) {
        let t = try startHostThread("the API server") { [self] in serve() }
        thread.withLock { $0 = t }
    }

    public func stop() {
        var b: UInt8 = 1
        _ = write(wake.write, &b, 1)
        if let t = thread.withLock({ $0 }) { pthread_join(t, nil) }
        close(listener)
        unlink(path)
    }

    struct Client {
        var fd: Int32
        var buffer: [UInt8] = []
        /// `100 Continue` was sent for the request being received.
        var continued = false
    }

    func serve() {
        var clients: [Client] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            var fds = [pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
            if clients.count < Self.maxClients { fds.append(pollfd(fd: listener, events: Int16(POLLIN), revents: 0)) }
            let firstClient = fds.count
            for c in clients { fds.append(pollfd(fd: c.fd, events: Int16(POLLIN), revents: 0)) }
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 { if errno == EINTR { continue }; break }
            if fds[0].revents != 0 { break }
            var closed: Set<Int32> = []
            for (i, p) in fds.enumerated().dropFirst(firstClient) where p.revents != 0 {
                let index = i - firstClient
                let got = recv(p.fd, &chunk, chunk.count, Int32(MSG_DONTWAIT))
                if got < 0, errno == EAGAIN || errno == EINTR { continue }
                if got <= 0 { closed.insert(p.fd); continue }
                clients[index].buffer += chunk[0..<got]
                if !answer(&clients[index]) { closed.insert(p.fd) }
            }
            for fd in closed { close(fd) }
            clients.removeAll { closed.contains($0.fd) }
            if firstClient == 2, fds[1].revents != 0 {
                let fd = accept(listener, nil, nil)
                if fd >= 0 {
                    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                    var tv = timeval(tv_sec: 2, tv_usec: 0)
                    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                    clients.append(Client(fd: fd))
                }
            }
        }
        for c in clients { close(c.fd) }
    }

    /// Answers every whole request in the client's buffer; false when the
    /// connection is to be closed.
    func answer(_ client: inout Client) -> Bool {
        while true {
            switch HTTPParser.parse(client.buffer[...], maxBodyBytes: maxBodyBytes) {
            case .incomplete:
                // curl asks before sending a body over 1 KiB (Expect: 100-continue).
                if !client.continued, HTTPParser.expectsContinue(client.buffer[...]) {
                    client.continued = true
                    return send(client.fd, Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
                }
                return true
            case let .failed(error):
                send(client.fd, HTTPResponse.fault(error.status, error.message).serialized(close: true))
                return false
            case let .request(request, consumed):
                client.buffer.removeFirst(consumed)
                client.continued = false
                let response = handler(request)
                guard send(client.fd, response.serialized(close: !request.keepAlive)), request.keepAlive else { return false }
            }
        }
    }

    @discardableResult
    func send(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return false }
            done += n
        }
        return true
    }
}
