//! Typed addresses: a physical address, a page frame number, an intermediate physical address
//! (what a stage-2 translates) and a guest frame number. The portable core takes these at its
//! public boundary, so that a pfn is never passed where a byte address is meant (or a guest's
//! IPA where a host physical address is).
//!
//! All four wrap a `u64` and convert only through named methods. Pages are 4 KiB (the only
//! granule pkvm-rs uses).

use core::fmt;

/// log2 of the page size (4 KiB granule).
pub const PAGE_SHIFT: u32 = 12;

macro_rules! addr_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            #[inline]
            #[must_use]
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x})", stringify!($name), self.0)
            }
        }
    };
}

addr_type!(
    /// A physical address (for the host, also its IPA: the host stage-2 is an identity map).
    PhysAddr
);
addr_type!(
    /// A physical page frame number: a [`PhysAddr`] shifted right by [`PAGE_SHIFT`].
    Pfn
);
addr_type!(
    /// An intermediate physical address: what a stage-2 translates (a guest's "physical"
    /// address, or a host address as its stage-2 sees it).
    Ipa
);
addr_type!(
    /// A guest frame number: an [`Ipa`] shifted right by [`PAGE_SHIFT`].
    Gfn
);

impl PhysAddr {
    /// The frame holding this address.
    #[inline]
    #[must_use]
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }

    /// Whether the address is `align`-aligned (`align` a power of two).
    #[inline]
    #[must_use]
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
}

impl Pfn {
    /// The address of the frame's first byte (wrapping for frames beyond 2^52: callers check
    /// ranges against the address space first).
    #[inline]
    #[must_use]
    pub const fn addr(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }

    /// `self + n` frames, or `None` on overflow.
    #[inline]
    #[must_use]
    pub const fn checked_add(self, n: u64) -> Option<Pfn> {
        match self.0.checked_add(n) {
            Some(v) => Some(Pfn(v)),
            None => None,
        }
    }
}

impl Ipa {
    /// The guest frame holding this address.
    #[inline]
    #[must_use]
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }

    /// The host physical address with the same value: only for the host's own stage-2, which
    /// is an identity map.
    #[inline]
    #[must_use]
    pub const fn host_pa(self) -> PhysAddr {
        PhysAddr(self.0)
    }
}

impl Gfn {
    /// The IPA of the frame's first byte (wrapping as [`Pfn::addr`]).
    #[inline]
    #[must_use]
    pub const fn ipa(self) -> Ipa {
        Ipa(self.0 << PAGE_SHIFT)
    }

    /// `self + n` frames, or `None` on overflow.
    #[inline]
    #[must_use]
    pub const fn checked_add(self, n: u64) -> Option<Gfn> {
        match self.0.checked_add(n) {
            Some(v) => Some(Gfn(v)),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let pa = PhysAddr(0x4123_4567);
        assert_eq!(pa.pfn(), Pfn(0x41234));
        assert_eq!(pa.pfn().addr(), PhysAddr(0x4123_4000));
        assert!(!pa.is_aligned(8) && PhysAddr(0x4123_4000).is_aligned(4096));
        assert_eq!(Ipa(0x8000_1234).gfn().ipa(), Ipa(0x8000_1000));
        assert_eq!(Ipa(0x1000).host_pa(), PhysAddr(0x1000));
        assert_eq!(Pfn(u64::MAX).checked_add(1), None);
        assert_eq!(Gfn(1).checked_add(2), Some(Gfn(3)));
        extern crate std;
        assert_eq!(std::format!("{}", Pfn(0x10)), "Pfn(0x10)");
        assert_eq!(std::format!("{:#x}", PhysAddr(0x10)), "0x10");
    }
}
