import VMCore
import Synchronization

/// A 16550A UART (the PC's COM1 at 0x3F8, IRQ 4), enough for Linux's 8250
/// driver: divisor latch, FIFO control, scratch, loopback (the driver's probe
/// uses it), transmit-empty and receive interrupts. Transmission is instant:
/// every byte written to THR goes straight to `output`.
public final class Serial16550: BusDevice {
    public static let com1Base: UInt16 = 0x3F8
    public static let com1IRQ: UInt32 = 4

    // Register bits (PC16550D datasheet; Linux include/uapi/linux/serial_reg.h).
    static let ierRDI: UInt8 = 0x01, ierTHRI: UInt8 = 0x02
    static let iirNoInterrupt: UInt8 = 0x01, iirTHRI: UInt8 = 0x02, iirRDI: UInt8 = 0x04, iirFIFO: UInt8 = 0xC0
    static let lcrDLAB: UInt8 = 0x80
    static let mcrLoop: UInt8 = 0x10
    static let lsrDR: UInt8 = 0x01, lsrTHRE: UInt8 = 0x20, lsrTEMT: UInt8 = 0x40
    static let receiveLimit = 1 << 16

    struct State: Codable {
        var ier: UInt8 = 0, lcr: UInt8 = 0, mcr: UInt8 = 0, scr: UInt8 = 0
        var dll: UInt8 = 0x0C, dlm: UInt8 = 0       // 9600 baud
        var fifoEnabled = false
        var thrInterrupt = false                    // THR-empty interrupt pending
        var rx: [UInt8] = []
        var rxHead = 0
        var irqHigh = false

        var rxCount: Int { rx.count - rxHead }

        var iir: UInt8 {
            var v: UInt8
            if ier & ierRDI != 0 && rxCount > 0 { v = iirRDI }
            else if ier & ierTHRI != 0 && thrInterrupt { v = iirTHRI }
            else { v = iirNoInterrupt }
            return fifoEnabled ? v | iirFIFO : v
        }

        var msr: UInt8 {
            guard mcr & mcrLoop != 0 else { return 0xB0 }  // DCD, DSR, CTS
            // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
            let m = mcr
            return (m & 0x01) << 5 | (m & 0x02) << 3 | (m & 0x04) << 4 | (m & 0x08) << 4
        }

        mutating func pop() -> UInt8 {
            guard rxCount > 0 else { return 0 }
            let b = rx[rxHead]
            rxHead += 1
            if rxHead == rx.count { rx.removeAll(keepingCapacity: true); rxHead = 0 }
            return b
        }
    }

    private let state = Mutex(State())
    private let output: @Sendable (UInt8) -> Void
    private let setIRQ: @Sendable (Bool) -> Void

    /// - Parameters:
    ///   - output: receives each transmitted byte.
    ///   - setIRQ: drives the interrupt line's level.
    public init(output: @escaping @Sendable (UInt8) -> Void, setIRQ: @escaping @Sendable (Bool) -> Void) {
        self.output = output
        self.setIRQ = setIRQ
    }

    /// Queues bytes typed by the user for the guest to read. Returns how many
    /// were taken (the rest wait: the receive buffer is bounded).
    @discardableResult
    public func receive(_ bytes: [UInt8]) -> Int {
        state.withLock { s in
            let n = min(bytes.count, Self.receiveLimit - s.rxCount)
            s.rx += bytes.prefix(n)
            updateIRQ(&s)
            return n
        }
    }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        let port = UInt16(truncatingIfNeeded: address)
        guard !data.isEmpty else { return }
        let value: UInt8 = state.withLock { s in
            let v: UInt8
            switch port &- Self.com1Base {
            case 0: v = s.lcr & Self.lcrDLAB != 0 ? s.dll : s.pop()
            case 1: v = s.lcr & Self.lcrDLAB != 0 ? s.dlm : s.ier
            case 2:
                v = s.iir
                if v & 0x0F == Self.iirTHRI { s.thrInterrupt = false }
            case 3: v = s.lcr
            case 4: v = s.mcr
            case 5: v = (s.rxCount > 0 ? Self.lsrDR : 0) | Self.lsrTHRE | Self.lsrTEMT
            case 6: v = s.msr
            default: v = s.scr
            }
            updateIRQ(&s)
            return v
        }
        data[0] = value
        for i in 1..<data.count { data[i] = 0 }
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        let port = UInt16(truncatingIfNeeded: address)
        guard let value = data.first else { return }
        var transmit: UInt8?
        state.withLock { s in
            switch port &- Self.com1Base {
            case 0:
                if s.lcr & Self.lcrDLAB != 0 { s.dll = value; break }
                if s.mcr & Self.mcrLoop != 0 {
                    if s.rxCount < Self.receiveLimit { s.rx.append(value) }
                } else {
                    transmit = value
                }
                s.thrInterrupt = true              // THR is empty again at once
            case 1:
                if s.lcr & Self.lcrDLAB != 0 { s.dlm = value; break }
                let enabling = value & Self.ierTHRI != 0 && s.ier & Self.ierTHRI == 0
                s.ier = value & 0x0F
                if enabling { s.thrInterrupt = true }
            case 2:
                s.fifoEnabled = value & 0x01 != 0
                if value & 0x02 != 0 { s.rx.removeAll(); s.rxHead = 0 }   // clear receive FIFO
            case 3: s.lcr = value
            case 4: s.mcr = value & 0x1F
            case 7: s.scr = value
            default: break
            }
            updateIRQ(&s)
        }
        if let transmit { output(transmit) }
    }

    private func updateIRQ(_ s: inout State) {
        let high = s.iir & Self.iirNoInterrupt == 0
        if high != s.irqHigh {
            s.irqHigh = high
            setIRQ(high)
        }
    }
}

extension Serial16550: SnapshotDevice {
    /// The registers and the input not yet read. The interrupt line is
    /// driven again from them (a fresh VM's line starts low).
    public func saveState() throws(DeviceStateError) -> [UInt8] {
        try DeviceStateCoding.encode(state.withLock { $0 })
    }

    public func restoreState(_ bytes: [UInt8]) throws(DeviceStateError) {
        var saved = try DeviceStateCoding.decode(State.self, bytes, device: "serial-com1")
        guard saved.rxHead >= 0, saved.rxHead <= saved.rx.count, saved.rx.count <= 2 * Self.receiveLimit else {
            throw DeviceStateError("serial-com1: its receive buffer does not fit")
        }
        saved.irqHigh = false
        state.withLock { s in
            s = saved
            updateIRQ(&s)
        }
    }
}

