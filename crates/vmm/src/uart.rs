//! A 16550A UART: the guest's console, driven through MMIO exits (byte registers, `reg-shift`
//! 0). Written here rather than taken from `vm-superio`, whose `Serial` writes to a
//! `std::io::Write` and so cannot live in this `no_std` crate.
//!
//! | offset | read | write |
//! |---|---|---|
//! | 0 | RBR (DLL with DLAB) | THR (DLL with DLAB) |
//! | 1 | IER (DLM with DLAB) | IER (DLM with DLAB) |
//! | 2 | IIR | FCR |
//! | 3 | LCR | LCR |
//! | 4 | MCR | MCR |
//! | 5 | LSR | — |
//! | 6 | MSR | — |
//! | 7 | SCR | SCR |
//!
//! Transmission is instant (THR is always empty, LSR.THRE and TEMT always set), so a polled
//! driver never waits. Received bytes wait in a 64-byte FIFO. In loopback mode (MCR bit 4) a
//! transmitted byte is received instead of sent, and the modem status mirrors the modem
//! controls, as drivers' self-tests expect. Interrupts (received data, THR empty) are computed
//! as the 16550 does ([`Uart::irq`]) for a VMM that wires the UART to an interrupt; the Linux
//! guest's device tree does not (the 8250 driver then polls).

use alloc::collections::VecDeque;

/// Receive FIFO depth.
pub const FIFO: usize = 64;

mod reg {
    pub const DATA: u64 = 0;
    pub const IER: u64 = 1;
    pub const IIR_FCR: u64 = 2;
    pub const LCR: u64 = 3;
    pub const MCR: u64 = 4;
    pub const LSR: u64 = 5;
    pub const MSR: u64 = 6;
    pub const SCR: u64 = 7;
}

/// IER: received data available.
const IER_RDA: u8 = 1;
/// IER: THR empty.
const IER_THRE: u8 = 1 << 1;
/// IIR: no interrupt pending.
const IIR_NONE: u8 = 1;
const IIR_THRE: u8 = 0x2;
const IIR_RDA: u8 = 0x4;
/// IIR bits 7:6 with the FIFOs enabled (a 16550A).
const IIR_FIFO: u8 = 0xc0;
const FCR_ENABLE: u8 = 1;
const FCR_CLEAR_RX: u8 = 1 << 1;
const LCR_DLAB: u8 = 1 << 7;
const MCR_LOOP: u8 = 1 << 4;
const LSR_DR: u8 = 1;
const LSR_OE: u8 = 1 << 1;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
/// MSR with nothing attached to the modem lines: carrier, data set ready, clear to send.
const MSR_IDLE: u8 = 0xb0;

/// The UART's registers and receive FIFO.
#[derive(Clone, Debug)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_on: bool,
    overrun: bool,
    /// A THR-empty interrupt is pending (set by a THR write or enabling it, cleared by reading
    /// IIR while it is the one reported).
    thre_pending: bool,
    rx: VecDeque<u8>,
}

impl Default for Uart {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart {
    /// A UART as after reset: 8N1 at the divisor 12 (9600 baud from 1.8432 MHz), interrupts
    /// off.
    #[must_use]
    pub fn new() -> Self {
        Self {
            ier: 0,
            lcr: 0x3,
            mcr: 0,
            scr: 0,
            dll: 12,
            dlm: 0,
            fifo_on: false,
            overrun: false,
            thre_pending: false,
            rx: VecDeque::with_capacity(FIFO),
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// What a VMM may answer without this model (the `/dev/pkvm` console page): whether a
    /// write of THR only sends its byte (no divisor latch, no loopback, no THR-empty interrupt
    /// enabled, whose pending state the write would set), and LSR's value while reading it
    /// changes nothing (no received byte, no overrun to clear).
    #[must_use]
    pub fn fast_path(&self) -> (bool, Option<u8>) {
        let tx = !self.dlab() && !self.loopback() && self.ier & IER_THRE == 0;
        let lsr = (self.rx.is_empty() && !self.overrun).then_some(LSR_THRE | LSR_TEMT);
        (tx, lsr)
    }

    /// Queues `byte` for the guest to read; a full FIFO drops it and flags an overrun.
    pub fn receive(&mut self, byte: u8) {
        if self.rx.len() < FIFO {
            self.rx.push_back(byte);
        } else {
            self.overrun = true;
        }
    }

    /// The interrupt the UART raises now, as IIR bits 3:0 (`None`: no interrupt).
    fn pending(&self) -> Option<u8> {
        if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            Some(IIR_RDA)
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            Some(IIR_THRE)
        } else {
            None
        }
    }

    /// Whether the interrupt line is raised (for a VMM that wires it; level-sensitive).
    #[must_use]
    pub fn irq(&self) -> bool {
        self.pending().is_some()
    }

    /// A guest read of the byte register at `offset` (offsets past 7 read as 0). Reading can
    /// change state (RBR pops the FIFO, LSR clears the overrun, IIR acknowledges THR empty).
    pub fn read(&mut self, offset: u64) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.dll,
            reg::DATA => self.rx.pop_front().unwrap_or(0),
            reg::IER if self.dlab() => self.dlm,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let fifo = if self.fifo_on { IIR_FIFO } else { 0 };
                match self.pending() {
                    Some(id) => {
                        if id == IIR_THRE {
                            self.thre_pending = false;
                        }
                        fifo | id
                    }
                    None => fifo | IIR_NONE,
                }
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => {
                let dr = if self.rx.is_empty() { 0 } else { LSR_DR };
                let oe = if core::mem::take(&mut self.overrun) {
                    LSR_OE
                } else {
                    0
                };
                dr | oe | LSR_THRE | LSR_TEMT
            }
            reg::MSR if self.loopback() => {
                // DTR → DSR, RTS → CTS, OUT1 → RI, OUT2 → DCD.
                let m = self.mcr;
                ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
            }
            reg::MSR => MSR_IDLE,
            reg::SCR => self.scr,
            _ => 0,
        }
    }

    /// A guest write of `value` to the byte register at `offset`; returns the byte to send to
    /// the console, if the write transmitted one (not in loopback mode, where it is received).
    pub fn write(&mut self, offset: u64, value: u8) -> Option<u8> {
        match offset {
            reg::DATA if self.dlab() => self.dll = value,
            reg::DATA => {
                self.thre_pending = true;
                if self.loopback() {
                    self.receive(value);
                } else {
                    return Some(value);
                }
            }
            reg::IER if self.dlab() => self.dlm = value,
            reg::IER => {
                // Enabling the THR-empty interrupt raises it at once: THR is empty.
                if value & IER_THRE != 0 && self.ier & IER_THRE == 0 {
                    self.thre_pending = true;
                }
                self.ier = value & 0x0f;
            }
            reg::IIR_FCR => {
                self.fifo_on = value & FCR_ENABLE != 0;
                if value & FCR_CLEAR_RX != 0 || !self.fifo_on {
                    self.rx.clear();
                }
            }
            reg::LCR => self.lcr = value,
            reg::MCR => self.mcr = value & 0x1f,
            reg::SCR => self.scr = value,
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polled_driver_sends_without_waiting() {
        let mut u = Uart::new();
        assert_eq!(
            u.read(reg::LSR) & (LSR_THRE | LSR_TEMT),
            LSR_THRE | LSR_TEMT
        );
        assert_eq!(u.write(reg::DATA, b'L'), Some(b'L'));
        assert_eq!(u.read(reg::LSR) & LSR_THRE, LSR_THRE);
        assert_eq!(u.read(reg::LSR) & LSR_DR, 0);
        // No interrupt is raised with interrupts off.
        assert!(!u.irq());
        assert_eq!(u.read(reg::IIR_FCR), IIR_NONE);
    }

    #[test]
    fn the_divisor_latch_hides_data_and_ier() {
        let mut u = Uart::new();
        u.write(reg::LCR, 0x83);
        assert_eq!(u.write(reg::DATA, 1), None, "DLL, not THR");
        u.write(reg::IER, 2);
        assert_eq!((u.read(reg::DATA), u.read(reg::IER)), (1, 2));
        u.write(reg::LCR, 0x03);
        assert_eq!(u.read(reg::IER), 0, "IER untouched by the DLM write");
        assert_eq!(u.write(reg::DATA, b'x'), Some(b'x'));
    }

    #[test]
    fn fifo_and_interrupt_identification_are_a_16550as() {
        let mut u = Uart::new();
        u.write(reg::IIR_FCR, 0x07);
        assert_eq!(u.read(reg::IIR_FCR), IIR_FIFO | IIR_NONE);
        u.receive(b'a');
        u.receive(b'b');
        assert_eq!(u.read(reg::IIR_FCR) & 0xf, IIR_NONE, "RDA not enabled");
        u.write(reg::IER, IER_RDA | IER_THRE);
        assert!(u.irq());
        // Received data comes first; THR empty once the FIFO is drained; reading IIR
        // acknowledges THR empty.
        assert_eq!(u.read(reg::IIR_FCR), IIR_FIFO | IIR_RDA);
        assert_eq!(u.read(reg::LSR) & LSR_DR, LSR_DR);
        assert_eq!((u.read(reg::DATA), u.read(reg::DATA)), (b'a', b'b'));
        assert_eq!(u.read(reg::IIR_FCR), IIR_FIFO | IIR_THRE);
        assert_eq!(u.read(reg::IIR_FCR), IIR_FIFO | IIR_NONE);
        assert!(!u.irq());
        // A transmitted byte raises it again.
        u.write(reg::DATA, b'c');
        assert!(u.irq());
        // FCR clears the receive FIFO.
        u.receive(b'z');
        u.write(reg::IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX);
        assert_eq!(u.read(reg::LSR) & LSR_DR, 0);
    }

    #[test]
    fn overrun_drops_bytes_and_is_reported_once() {
        let mut u = Uart::new();
        for i in 0..=FIFO {
            u.receive(i as u8);
        }
        assert_eq!(u.read(reg::LSR) & LSR_OE, LSR_OE);
        assert_eq!(u.read(reg::LSR) & LSR_OE, 0);
        let got: alloc::vec::Vec<u8> = (0..FIFO).map(|_| u.read(reg::DATA)).collect();
        assert_eq!(got, (0..FIFO as u8).collect::<alloc::vec::Vec<_>>());
        assert_eq!(u.read(reg::LSR) & LSR_DR, 0);
    }

    #[test]
    fn loopback_receives_what_is_sent_and_mirrors_the_modem_lines() {
        let mut u = Uart::new();
        u.write(reg::MCR, MCR_LOOP | 0x0a); // OUT2 | RTS
        assert_eq!(u.read(reg::MSR) & 0xf0, 0x90, "DCD | CTS");
        u.write(reg::MCR, MCR_LOOP | 0x05); // OUT1 | DTR
        assert_eq!(u.read(reg::MSR) & 0xf0, 0x60, "RI | DSR");
        assert_eq!(u.write(reg::DATA, 0x55), None);
        assert_eq!(u.read(reg::DATA), 0x55);
        u.write(reg::MCR, 0);
        assert_eq!(u.read(reg::MSR), MSR_IDLE);
        assert_eq!(u.read(reg::SCR), 0);
        u.write(reg::SCR, 0xa5);
        assert_eq!(u.read(reg::SCR), 0xa5);
    }

    #[test]
    fn any_access_is_harmless() {
        let mut u = Uart::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % 12;
            if x & (1 << 40) == 0 {
                u.read(off);
            } else {
                u.write(off, (x >> 48) as u8);
            }
            u.receive((x >> 8) as u8);
            assert!(u.rx.len() <= FIFO);
        }
    }
}
