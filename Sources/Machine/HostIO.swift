import Glibc

/// Writes to the host's file descriptors that svmm does not own (its stdout).
public enum HostIO {
    /// Writes all of `bytes` to `fd`, resuming after EINTR and a short
    /// write, and waiting in poll(2) while a non-blocking descriptor (one a
    /// parent process left O_NONBLOCK) is full, so guest output is neither
    /// dropped nor spun on. Returns false when `fd` fails otherwise (a closed
    /// pipe: EPIPE), with what was not written dropped.
    @discardableResult
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        var done = 0
        while done < bytes.count {
            let n = write(fd, base + done, bytes.count - done)
            if n >= 0 { done += n; continue }
            switch errno {
            case EINTR: continue
            case EAGAIN:
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&p, 1, -1) < 0 && errno != EINTR { return false }
            default: return false
            }
        }
        return true
    }
}
