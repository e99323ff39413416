import VMCore
/// A few ACPI Machine Language encoders (ACPI 6.4 §20.2), enough for svmm's
/// DSDT. Each returns the encoded bytes of one term.
enum AML {
    /// PkgLength (§20.2.4): the length of what follows, including itself.
    static func pkgLength(_ contentLength: Int) -> [UInt8] {
        for extra in 0...3 {
            let total = contentLength + 1 + extra
            if extra == 0 && total <= 0x3F { return [UInt8(total)] }
            if extra > 0 && total < 1 << (4 + 8 * extra) {
                var bytes = [UInt8(extra << 6) | UInt8(total & 0xF)]
                for i in 0..<extra { bytes.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * i))) }
                return bytes
            }
        }
        preconditionFailure("AML package too large")
    }

    /// A NameSeg or a path like "\\_SB_" / "COM1" (segments padded with '_').
    static func nameString(_ name: String) -> [UInt8] {
        var prefix: [UInt8] = []
        var rest = Substring(name)
        if rest.hasPrefix("\\") { prefix = [0x5C]; rest = rest.dropFirst() }
        let segments = rest.split(separator: ".").map { seg -> [UInt8] in
            var b = Array(seg.utf8.prefix(4))
            while b.count < 4 { b.append(UInt8(ascii: "_")) }
            return b
        }
        switch segments.count {
        case 1: return prefix + segments[0]
        case 2: return prefix + [0x2E] + segments.flatMap { $0 }
        default: return prefix + [0x2F, UInt8(segments.count)] + segments.flatMap { $0 }
        }
    }

    static func integer(_ v: UInt64) -> [UInt8] {
        switch v {
        case 0: return [0x00]                                       // ZeroOp
        case 1: return [0x01]                                       // OneOp
        case ...0xFF: return [0x0A, UInt8(v)]                       // BytePrefix
        case ...0xFFFF: return [0x0B] + le(v, 2)                    // WordPrefix
        case ...0xFFFF_FFFF: return [0x0C] + le(v, 4)               // DWordPrefix
        default: return [0x0E] + le(v, 8)                           // QWordPrefix
        }
    }

    static func string(_ s: String) -> [UInt8] { [0x0D] + Array(s.utf8) + [0x00] }

    /// EISA id ("PNP0501") as the DWord _HID encoding (§6.1.5).
    static func eisaID(_ id: String) -> [UInt8] {
        let c = Array(id.utf8)
        let vendor = UInt16(c[0] - 0x40) << 10 | UInt16(c[1] - 0x40) << 5 | UInt16(c[2] - 0x40)
        let product = UInt16(String(decoding: c[3...], as: UTF8.self), radix: 16)!
        return [0x0C, UInt8(vendor >> 8), UInt8(vendor & 0xFF), UInt8(product >> 8), UInt8(product & 0xFF)]
    }

    static func name(_ n: String, _ value: [UInt8]) -> [UInt8] { [0x08] + nameString(n) + value }

    static func scope(_ n: String, _ body: [UInt8]) -> [UInt8] {
        let content = nameString(n) + body
        return [0x10] + pkgLength(content.count) + content
    }

    static func device(_ n: String, _ body: [UInt8]) -> [UInt8] {
        let content = nameString(n) + body
        return [0x5B, 0x82] + pkgLength(content.count) + content
    }

    static func package(_ elements: [[UInt8]]) -> [UInt8] {
        let content = [UInt8(elements.count)] + elements.flatMap { $0 }
        return [0x12] + pkgLength(content.count) + content
    }

    static func buffer(_ bytes: [UInt8]) -> [UInt8] {
        let content = integer(UInt64(bytes.count)) + bytes
        return [0x11] + pkgLength(content.count) + content
    }

    /// A resource template (§6.4): descriptors followed by the end tag.
    static func resourceTemplate(_ descriptors: [[UInt8]]) -> [UInt8] {
        buffer(descriptors.flatMap { $0 } + [0x79, 0x00])
    }

    /// I/O port descriptor (§6.4.2.5), 16-bit decode.
    static func ioPorts(_ base: UInt16, count: UInt8) -> [UInt8] {
        [0x47, 0x01] + le(UInt64(base), 2) + le(UInt64(base), 2) + [0x01, count]
    }

    /// Word address space descriptor for a bus-number range (§6.4.3.5.3),
    /// produced by the device (a root bridge's decoding window).
    static func busNumbers(_ first: UInt16, _ last: UInt16) -> [UInt8] {
        [0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00] + le(0, 2) + le(UInt64(first), 2) + le(UInt64(last), 2)
            + le(0, 2) + le(UInt64(last - first) + 1, 2)
    }

    /// DWord address space descriptor (§6.4.3.5.2): an I/O (type 1) or memory
    /// (type 0) window the root bridge forwards.
    static func dwordWindow(io: Bool, _ first: UInt32, _ last: UInt32) -> [UInt8] {
        [0x87, 0x17, 0x00, io ? 0x01 : 0x00, 0x0C, io ? 0x03 : 0x01] + le(0, 4) + le(UInt64(first), 4)
            + le(UInt64(last), 4) + le(0, 4) + le(UInt64(last - first) + 1, 4)
    }

    /// IRQ descriptor without flags (§6.4.2.1): edge, active high.
    static func irq(_ n: Int) -> [UInt8] {
        [0x22] + le(UInt64(1) << UInt64(n), 2)
    }
}
