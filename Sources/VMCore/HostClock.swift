import CHost
import Glibc

/// The host's clocks and the exit counters' atomic primitives (CHost), in Swift.
public enum HostClock {
    /// The time-stamp counter (cheap enough for the exit path).
    @inlinable public static func tsc() -> UInt64 { chost_rdtsc() }
    /// CLOCK_MONOTONIC in nanoseconds.
    @inlinable public static func nanoseconds() -> UInt64 { chost_now_ns() }
}

/// Counters in raw memory, written by one thread and read by any: relaxed
/// single-writer adds, release stores, acquire loads.
public enum Counter {
    @inlinable public static func add(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) { chost_counter_add(p, v) }
    @inlinable public static func store(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) { chost_counter_store(p, v) }
    @inlinable public static func load(_ p: UnsafeMutablePointer<UInt64>) -> UInt64 { chost_counter_load(p) }
}

/// getrandom(2): fills `buffer` from the kernel's pool; the bytes filled.
public func hostRandomBytes(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
    var done = 0
    while done < buffer.count {
        let n = chost_getrandom(buffer.baseAddress! + done, UInt(buffer.count - done))
        if n == -Int(EINTR) { continue }
        if n <= 0 { break }
        done += n
    }
    return done
}
