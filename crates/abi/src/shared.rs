//! Structures shared by address with another party (the host with EL2): each is `#[repr(C)]`
//! and made of `u64` words only, and implements [`Words`], so that either side reads or writes
//! it whole, word by word, as a value — never through a reference into memory the other party
//! may change meanwhile.

/// A `#[repr(C)]` structure of `u64` words, shared with another party.
///
/// Implemented by [`words!`](crate::words) from the field list, which checks at compile time
/// that word `i` is the field at byte offset `8 * i` and that nothing else is in the structure.
pub trait Words: Copy + Default {
    /// Number of words.
    const WORDS: usize;

    /// Reads a whole structure, word `i` (byte offset `8 * i`) from `read(i)`, in order.
    fn read_with(read: impl FnMut(usize) -> u64) -> Self;

    /// Writes a whole structure, word `i` through `write(i, word)`, in order.
    fn write_with(&self, write: impl FnMut(usize, u64));
}

/// Implements [`Words`] for a structure of `u64` fields, listed in declaration order.
///
/// A list out of order, or missing a field, does not compile:
///
/// ```compile_fail
/// #[repr(C)]
/// #[derive(Clone, Copy, Default)]
/// struct Pair { a: u64, b: u64 }
/// pkvm_abi::words!(Pair { b, a });
/// ```
///
/// ```compile_fail
/// #[repr(C)]
/// #[derive(Clone, Copy, Default)]
/// struct Pair { a: u64, b: u64 }
/// pkvm_abi::words!(Pair { a });
/// ```
///
/// ```
/// #[repr(C)]
/// #[derive(Clone, Copy, Default)]
/// struct Pair { a: u64, b: u64 }
/// pkvm_abi::words!(Pair { a, b });
/// ```
#[macro_export]
macro_rules! words {
    ($ty:ty { $($field:ident),+ $(,)? }) => {
        impl $crate::shared::Words for $ty {
            const WORDS: usize = [$(stringify!($field)),+].len();

            #[inline(always)]
            fn read_with(mut read: impl FnMut(usize) -> u64) -> Self {
                let mut n = 0;
                Self {
                    $($field: {
                        n += 1;
                        read(n - 1)
                    }),+
                }
            }

            #[inline(always)]
            fn write_with(&self, mut write: impl FnMut(usize, u64)) {
                let mut n = 0;
                $(
                    write(n, self.$field);
                    n += 1;
                )+
                let _ = n;
            }
        }
        const _: () = {
            let mut n = 0;
            $(
                assert!(core::mem::offset_of!($ty, $field) == 8 * n, "fields out of order");
                n += 1;
            )+
            assert!(core::mem::size_of::<$ty>() == 8 * n, "fields missing");
        };
    };
}

#[cfg(test)]
mod tests {
    use super::Words;
    use crate::guest::{VcpuExit, VmDesc};

    #[test]
    fn words_round_trip_in_memory_order() {
        let e = VcpuExit {
            reason: 1,
            esr: 2,
            far: 3,
            ipa: 4,
            mmio_size: 5,
            mmio_write: 6,
            mmio_data: 7,
            code: 8,
        };
        let mut mem = [0u64; 8];
        e.write_with(|i, w| mem[i] = w);
        assert_eq!(mem, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(VcpuExit::read_with(|i| mem[i]), e);
        assert_eq!(VmDesc::WORDS, 6);
        let d = VmDesc::read_with(|i| 10 + i as u64);
        assert_eq!((d.ipa_bits, d.nr_vcpus, d.flags), (10, 11, 13));
    }
}
