import Stats
import VMCore
import Glibc
import Synchronization

/// Puts stdin in raw mode while a guest owns the console, and restores it on
/// every way out (normal return, exit(), fatal signal handlers call restore).
enum Terminal {
    private static let saved = Mutex<termios?>(nil)

    static func enterRawMode() {
        guard isatty(0) == 1 else { return }
        var t = termios()
        guard tcgetattr(0, &t) == 0 else { return }
        saved.withLock { $0 = t }
        var raw = t
        cfmakeraw(&raw)
        raw.c_oflag |= tcflag_t(OPOST | ONLCR)   // keep "\n" → "\r\n" for svmm's own messages
        tcsetattr(0, TCSANOW, &raw)
        atexit { Terminal.restore() }
    }

    static func restore() {
        if var t = saved.withLock({ $0 }) {
            tcsetattr(0, TCSANOW, &t)
        }
    }
}
