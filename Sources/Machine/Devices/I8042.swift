import Synchronization
import VMCore

/// The PC keyboard controller (i8042) with a keyboard behind it: as much as
/// Linux's i8042 and atkbd drivers need to find a keyboard without waiting
/// on timeouts, so that Ctrl-Alt-Del can be typed into the guest
/// (`sendCtrlAltDel`, Firecracker's `SendCtrlAltDel`). No mouse: the
/// auxiliary port's tests fail at once. Port 0x60 is data, 0x64 status (read)
/// and command (write); 0xFE to 0x64 pulses the reset line. Bytes for the
/// guest raise IRQ 1 (an edge per byte) while the controller's keyboard
/// interrupt is enabled. The keyboard speaks scan code set 2 (the
/// controller does not translate unless the guest sets the bit).
///
/// Two queues feed port 0x60, as on a PC: the answer to the last command
/// (the controller's, or the keyboard's acknowledgement and reply) comes
/// first, and the keys typed wait behind it, kept while the guest talks to
/// the keyboard (a command's answer replaced them before, so keys typed
/// just before the driver set the LEDs were lost). A new command's answer
/// replaces an unread older answer; the keyboard's reset commands (0xFF,
/// 0xF5, 0xF6) clear its keys, as a keyboard's reset does.
///
/// Each edge on IRQ 1 (two `KVM_IRQ_LINE` calls, up then down) is made under
/// the device's lock. The API's thread (a key typed) and a vCPU's (a byte
/// read, more behind it) both make edges, and KVM keeps one level per line
/// for all of userspace: interleaved (up, up, down, down), two edges were one,
/// and Linux's handler, which reads one byte per interrupt, never heard of
/// the rest of Ctrl-Alt-Del (ServeTests in CI runs 40 and 46; by hand in
/// the sandbox, where a thread is easily preempted between its two calls,
/// 2 boots of 10 before, 0 of 6 after).
public final class I8042: BusDevice {
    public static let dataPort: UInt16 = 0x60
    public static let commandPort: UInt16 = 0x64
    public static let irq: UInt32 = 1
    static let bufferSize = 16

    // Status register bits.
    static let statusOutputFull: UInt8 = 0x01
    static let statusSystem: UInt8 = 0x04
    static let statusCommandData: UInt8 = 0x08
    static let statusUnlocked: UInt8 = 0x10
    // Control register ("command byte") bits.
    static let controlKeyboardInterrupt: UInt8 = 0x01
    static let controlSystem: UInt8 = 0x04

    /// Ctrl, Alt and Delete pressed, in scan code set 2.
    public static let ctrlAltDel: [UInt8] = [0x14, 0x11, 0xE0, 0x71]

    struct State: Codable {
        var control: UInt8 = controlSystem | controlKeyboardInterrupt
        var outputPort: UInt8 = 0x01
        /// A controller command waiting for its byte at port 0x60.
        var pendingCommand: UInt8?
        /// A keyboard command waiting for its parameter (set LEDs, typematic rate, scan code set).
        var keyboardParameter = false
        /// Keys typed, not yet read.
        var buffer: [UInt8] = []
        /// The last command's answer, not yet read; read before the keys.
        /// Optional so that states saved before it existed still load.
        var answer: [UInt8]? = nil

        var status: UInt8 {
            var s = statusUnlocked | (control & controlSystem)
            if !buffer.isEmpty || answer?.isEmpty == false { s |= statusOutputFull }
            if pendingCommand != nil { s |= statusCommandData }
            return s
        }
    }

    private let state = Mutex(State())
    private let setIRQ: @Sendable (Bool) -> Void
    private let reset: @Sendable () -> Void

    /// `setIRQ` drives IRQ 1; `reset` is the reset line (the guest's reboot).
    public init(setIRQ: @escaping @Sendable (Bool) -> Void, reset: @escaping @Sendable () -> Void) {
        self.setIRQ = setIRQ
        self.reset = reset
    }

    /// Types Ctrl-Alt-Del; false when the keyboard's buffer has no room for it.
    @discardableResult
    public func sendCtrlAltDel() -> Bool {
        state.withLock { s in
            guard s.buffer.count + Self.ctrlAltDel.count <= Self.bufferSize else { return false }
            s.buffer += Self.ctrlAltDel
            if s.control & Self.controlKeyboardInterrupt != 0 { pulse() }
            return true
        }
    }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        data.initializeMemory(as: UInt8.self, repeating: 0)
        // Byte-wide registers: a wider read gets the byte and zeros, with the byte's effect.
        switch UInt16(truncatingIfNeeded: address) {
        case Self.commandPort:
            data[0] = state.withLock { $0.status }
        case Self.dataPort:
            data[0] = state.withLock { s -> UInt8 in
                let b: UInt8
                if s.answer?.isEmpty == false {
                    b = s.answer!.removeFirst()      // in place: no copy of the answer
                    if s.answer!.isEmpty { s.answer = nil }
                } else if !s.buffer.isEmpty {
                    b = s.buffer.removeFirst()
                } else {
                    return 0
                }
                if s.status & Self.statusOutputFull != 0 && s.control & Self.controlKeyboardInterrupt != 0 { pulse() }
                return b
            }
        default:
            break
        }
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        guard let v = data.first else { return }
        let port = UInt16(truncatingIfNeeded: address)
        var resetNow = false
        state.withLock { s in
            func answer(_ bytes: [UInt8]) {
                s.answer = bytes   // replaces an unread answer; the keys wait behind it
                if s.control & Self.controlKeyboardInterrupt != 0 { pulse() }
            }
            if port == Self.commandPort {
                s.pendingCommand = nil
                switch v {
                case 0x20: answer([s.control])                          // read the control register
                case 0x60, 0xD1, 0xD3: s.pendingCommand = v            // write control, output port; aux loopback
                case 0xD0: answer([s.outputPort])                       // read the output port
                case 0xA9: answer([0x01])                               // aux interface test: clock line stuck low (no mouse)
                case 0xAA: answer([0x55])                               // self-test passed
                case 0xAB: answer([0x00])                               // keyboard interface test passed
                case 0xFE: resetNow = true                              // pulse the reset line
                default: break                                          // enable/disable ports, and the rest: accepted
                }
                return
            }
            guard port == Self.dataPort else { return }
            if let command = s.pendingCommand {
                s.pendingCommand = nil
                switch command {
                case 0x60: s.control = v
                case 0xD1:
                    s.outputPort = v
                    if v & 0x01 == 0 { resetNow = true }              // bit 0 low: the reset line
                case 0xD3: answer([0xFE])                               // no mouse: the loopback is not echoed
                default: break
                }
                return
            }
            // A byte for the keyboard.
            if s.keyboardParameter {
                s.keyboardParameter = false
                answer([0xFA])
                return
            }
            switch v {
            case 0xF2: answer([0xFA, 0xAB, 0x83])                       // identify: an MF2 keyboard
            case 0xFF:                                                  // reset: self-test passed
                s.buffer.removeAll()
                answer([0xFA, 0xAA])
            case 0xF5, 0xF6:                                            // defaults (and disable): the keys are dropped
                s.buffer.removeAll()
                answer([0xFA])
            case 0xEE: answer([0xEE])                                   // echo
            case 0xED, 0xF0, 0xF3:                                      // LEDs, scan code set, typematic: a parameter follows
                s.keyboardParameter = true
                answer([0xFA])
            default: answer([0xFA])
            }
        }
        if resetNow { reset() }
    }

    /// An edge on IRQ 1; called with the state locked (above).
    private func pulse() {
        setIRQ(true)
        setIRQ(false)
    }
}

extension I8042: SnapshotDevice {
    public func saveState() throws(DeviceStateError) -> [UInt8] {
        try DeviceStateCoding.encode(state.withLock { $0 })
    }

    /// Keys waiting in the buffer interrupt again once restored.
    public func restoreState(_ bytes: [UInt8]) throws(DeviceStateError) {
        let saved = try DeviceStateCoding.decode(State.self, bytes, device: "i8042")
        guard saved.buffer.count <= Self.bufferSize, (saved.answer?.count ?? 0) <= 3 else {
            throw DeviceStateError("i8042: \(saved.buffer.count) keys and \(saved.answer?.count ?? 0) answer bytes buffered, more than \(Self.bufferSize) and 3")
        }
        state.withLock { s in
            s = saved
            if s.status & Self.statusOutputFull != 0 && s.control & Self.controlKeyboardInterrupt != 0 { pulse() }
        }
    }
}

