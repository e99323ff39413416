import Dispatch
import Glibc
@testable import KVM
import Synchronization
import Testing

/// KVM keeps the last GSI routing table written, whole.
@Suite struct GSIRouterTests {
    /// Two devices' vCPUs reprogram a vector each at once: the first's table
    /// write is held in the kernel a while, the second's comes meanwhile.
    /// The last table written has both routes. Unlocked, the first's older
    /// table landed last and KVM lost the second route (the shape of the
    /// i8042's lost edges, session 20).
    @Test func theLastTableWrittenHasEveryRoute() {
        let written = Mutex<[[UInt32]]>([])    // each table's MSI GSIs
        let firstWriting = DispatchSemaphore(value: 0)
        let router = GSIRouter { routes in
            let msi = routes.map(\.gsi).filter { $0 >= GSIRouter.firstMSIGSI }
            if msi.count == 1 { firstWriting.signal(); usleep(200_000) }
            written.withLock { $0.append(msi) }
            return 0
        }
        let a = router.allocate(), b = router.allocate()
        let done = DispatchGroup()
        DispatchQueue.global().async(group: done) { try? router.setMSI(a, .init(address: 0xFEE0_0000, data: 0x41)) }
        firstWriting.wait()
        try? router.setMSI(b, .init(address: 0xFEE0_0000, data: 0x42))
        done.wait()
        #expect(written.withLock { $0.last } == [a, b])
        #expect(written.withLock { $0.count } == 2)
    }

    /// A table KVM refuses leaves the route as it was: setting it again writes again.
    @Test func aRefusedTableIsNotTakenForWritten() {
        let fail = Atomic<Bool>(true)
        let writes = Atomic<Int>(0)
        let router = GSIRouter { _ in
            writes.add(1, ordering: .relaxed)
            return fail.load(ordering: .relaxed) ? -EINVAL : 0
        }
        let a = router.allocate()
        #expect(throws: KVMError.self) { try router.setMSI(a, .init(address: 0xFEE0_0000, data: 0x41)) }
        fail.store(false, ordering: .relaxed)
        #expect(throws: Never.self) { try router.setMSI(a, .init(address: 0xFEE0_0000, data: 0x41)) }
        #expect(writes.load(ordering: .relaxed) == 2)
    }
}
