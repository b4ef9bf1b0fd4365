//! XDR (RFC 4506) primitives: a bounds-checked decoder over a borrowed record and an encoder
//! that appends to a `Vec<u8>`.
//!
//! Every variable-length item (opaque, string, array, linked list) is decoded with an explicit
//! maximum; the length word is checked against that maximum *and* against the bytes left in the
//! record before anything is allocated, so a hostile 4 GiB length costs nothing. Decoding never
//! panics: every failure is an [`XdrError`].

use std::ops::Range;

/// Why an XDR decode failed. All variants mean "the sender's bytes are bad" (GARBAGE_ARGS).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdrError {
    /// The input ended before the item was complete.
    #[error("XDR input truncated: needed {needed} bytes at offset {offset}, {left} left")]
    Truncated {
        /// Offset (in the record) where the item starts.
        offset: usize,
        /// Bytes the item needs.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// A length word exceeds the protocol maximum for that item.
    #[error("XDR length {len} of {what} exceeds the maximum {max}")]
    TooLong {
        /// What was being decoded.
        what: &'static str,
        /// The length the sender claimed.
        len: u64,
        /// The maximum we accept.
        max: u64,
    },
    /// An enum or union discriminant has no defined meaning.
    #[error("XDR value {value} is not a valid {what}")]
    BadDiscriminant {
        /// What was being decoded.
        what: &'static str,
        /// The value received.
        value: u32,
    },
    /// A string that must be UTF-8 (netid, universal address) is not.
    #[error("XDR string {what} is not UTF-8")]
    NotUtf8 {
        /// What was being decoded.
        what: &'static str,
    },
    /// Bytes were left over after the arguments of a procedure (the sender and we disagree on
    /// the layout; treat as garbage rather than guessing).
    #[error("{left} trailing bytes after the arguments")]
    TrailingBytes {
        /// How many bytes were left.
        left: usize,
    },
}

/// Result alias for XDR decoding.
pub type XdrResult<T> = Result<T, XdrError>;

/// Bytes of padding after an opaque of `len` bytes (XDR aligns items to 4 bytes).
pub const fn pad_len(len: usize) -> usize {
    (4 - (len % 4)) % 4
}

/// Zero bytes to append after an opaque of `len` bytes (for vectored writes of READ data).
pub fn padding(len: usize) -> &'static [u8] {
    const ZEROS: [u8; 3] = [0; 3];
    &ZEROS[..pad_len(len)]
}

/// A cursor over one received record. Positions are record-absolute, so ranges handed out by
/// [`Decoder::opaque_range`] index the same buffer the caller owns (zero-copy WRITE data).
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    /// A decoder over `buf` starting at `pos` (clamped to the end of `buf`).
    pub fn new_at(buf: &'a [u8], pos: usize) -> Self {
        Decoder {
            buf,
            pos: pos.min(buf.len()),
        }
    }

    /// Current offset in the record.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The whole record this decoder reads from.
    pub fn buffer(&self) -> &'a [u8] {
        self.buf
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> XdrResult<()> {
        match self.remaining() {
            0 => Ok(()),
            left => Err(XdrError::TrailingBytes { left }),
        }
    }

    fn take(&mut self, needed: usize) -> XdrResult<&'a [u8]> {
        let left = self.remaining();
        if needed > left {
            return Err(XdrError::Truncated {
                offset: self.pos,
                needed,
                left,
            });
        }
        let start = self.pos;
        self.pos += needed;
        Ok(&self.buf[start..self.pos])
    }

    /// An unsigned 32-bit integer.
    pub fn u32(&mut self) -> XdrResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A signed 32-bit integer.
    pub fn i32(&mut self) -> XdrResult<i32> {
        Ok(self.u32()? as i32)
    }

    /// An unsigned 64-bit integer (hyper).
    pub fn u64(&mut self) -> XdrResult<u64> {
        let hi = self.u32()? as u64;
        let lo = self.u32()? as u64;
        Ok((hi << 32) | lo)
    }

    /// A boolean; values other than 0 and 1 are rejected.
    pub fn bool(&mut self) -> XdrResult<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(XdrError::BadDiscriminant {
                what: "bool",
                value,
            }),
        }
    }

    /// Fixed-length opaque of `N` bytes (plus padding).
    pub fn fixed<const N: usize>(&mut self) -> XdrResult<[u8; N]> {
        let b = self.take(N + pad_len(N))?;
        let mut out = [0u8; N];
        out.copy_from_slice(&b[..N]);
        Ok(out)
    }

    /// Reads a length word and checks it against `max` and the bytes left, before anything
    /// is allocated. `unit_bytes` is the minimum encoded size of one element.
    fn length(&mut self, what: &'static str, max: usize, unit_bytes: usize) -> XdrResult<usize> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(XdrError::TooLong {
                what,
                len: len as u64,
                max: max as u64,
            });
        }
        let needed = len.saturating_mul(unit_bytes);
        if needed > self.remaining() {
            return Err(XdrError::Truncated {
                offset: self.pos,
                needed,
                left: self.remaining(),
            });
        }
        Ok(len)
    }

    /// Variable-length opaque of at most `max` bytes, borrowed from the record.
    pub fn opaque(&mut self, what: &'static str, max: usize) -> XdrResult<&'a [u8]> {
        let range = self.opaque_range(what, max)?;
        Ok(&self.buf[range])
    }

    /// Variable-length opaque of at most `max` bytes, as a record-absolute range (no copy).
    pub fn opaque_range(&mut self, what: &'static str, max: usize) -> XdrResult<Range<usize>> {
        let len = self.length(what, max, 1)?;
        let start = self.pos;
        self.take(len + pad_len(len))?;
        Ok(start..start + len)
    }

    /// Variable-length opaque copied into a `Vec` (for small, bounded items).
    pub fn opaque_vec(&mut self, what: &'static str, max: usize) -> XdrResult<Vec<u8>> {
        Ok(self.opaque(what, max)?.to_vec())
    }

    /// An XDR string of at most `max` bytes. Kept as bytes: NFS names need not be UTF-8.
    pub fn string_bytes(&mut self, what: &'static str, max: usize) -> XdrResult<Vec<u8>> {
        self.opaque_vec(what, max)
    }

    /// An XDR string that must be UTF-8 (netids, universal addresses).
    pub fn string_utf8(&mut self, what: &'static str, max: usize) -> XdrResult<String> {
        let bytes = self.opaque(what, max)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(XdrError::NotUtf8 { what }),
        }
    }

    /// A counted array of at most `max` elements, each at least `elem_min_bytes` long.
    pub fn array<T>(
        &mut self,
        what: &'static str,
        max: usize,
        elem_min_bytes: usize,
        mut elem: impl FnMut(&mut Self) -> XdrResult<T>,
    ) -> XdrResult<Vec<T>> {
        let len = self.length(what, max, elem_min_bytes.max(1))?;
        let mut out = Vec::with_capacity(len);
        for _ in 0..len {
            out.push(elem(self)?);
        }
        Ok(out)
    }

    /// An XDR linked list (`*next` optional-data chain) of at most `max` elements.
    pub fn list<T>(
        &mut self,
        what: &'static str,
        max: usize,
        mut elem: impl FnMut(&mut Self) -> XdrResult<T>,
    ) -> XdrResult<Vec<T>> {
        let mut out = Vec::new();
        while self.bool()? {
            if out.len() >= max {
                return Err(XdrError::TooLong {
                    what,
                    len: out.len() as u64 + 1,
                    max: max as u64,
                });
            }
            out.push(elem(self)?);
        }
        Ok(out)
    }

    /// An optional item (`*T`, XDR optional-data).
    pub fn option<T>(
        &mut self,
        elem: impl FnOnce(&mut Self) -> XdrResult<T>,
    ) -> XdrResult<Option<T>> {
        if self.bool()? {
            Ok(Some(elem(self)?))
        } else {
            Ok(None)
        }
    }
}

/// Appends an XDR linked list (`*next` optional-data chain): the encoding side of
/// [`Decoder::list`].
pub fn put_list<T: Xdr>(out: &mut Vec<u8>, items: &[T]) {
    for item in items {
        out.put_bool(true);
        item.encode(out);
    }
    out.put_bool(false);
}

/// Appends XDR items to a byte vector. Encoding cannot fail: callers build values that already
/// respect the protocol bounds (asserted here, since a violation is our bug, not the peer's).
pub trait XdrWrite {
    /// Appends an unsigned 32-bit integer.
    fn put_u32(&mut self, v: u32);
    /// Appends a signed 32-bit integer.
    fn put_i32(&mut self, v: i32) {
        self.put_u32(v as u32)
    }
    /// Appends an unsigned 64-bit integer.
    fn put_u64(&mut self, v: u64) {
        self.put_u32((v >> 32) as u32);
        self.put_u32(v as u32);
    }
    /// Appends a boolean.
    fn put_bool(&mut self, v: bool) {
        self.put_u32(v as u32)
    }
    /// Appends fixed-length opaque bytes plus padding.
    fn put_fixed(&mut self, bytes: &[u8]);
    /// Appends a variable-length opaque (length, bytes, padding).
    fn put_opaque(&mut self, bytes: &[u8]) {
        assert!(bytes.len() <= u32::MAX as usize);
        self.put_u32(bytes.len() as u32);
        self.put_fixed(bytes);
    }
}

impl XdrWrite for Vec<u8> {
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_fixed(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
        self.extend_from_slice(padding(bytes.len()));
    }
}

/// Encoded size of a variable-length opaque of `len` bytes.
pub const fn opaque_size(len: usize) -> usize {
    4 + len + pad_len(len)
}

/// A type with an XDR encoding.
pub trait Xdr: Sized {
    /// Appends the encoding of `self`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes one value.
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self>;
}

impl Xdr for () {
    fn encode(&self, _out: &mut Vec<u8>) {}
    fn decode(_dec: &mut Decoder<'_>) -> XdrResult<Self> {
        Ok(())
    }
}

impl Xdr for u32 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32(*self)
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        dec.u32()
    }
}

impl Xdr for u64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u64(*self)
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        dec.u64()
    }
}

impl Xdr for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_bool(*self)
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        dec.bool()
    }
}

impl<const N: usize> Xdr for [u8; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_fixed(self);
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        dec.fixed::<N>()
    }
}

impl<T: Xdr> Xdr for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.put_bool(false),
            Some(v) => {
                out.put_bool(true);
                v.encode(out);
            }
        }
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        dec.option(T::decode)
    }
}

/// Encodes `value` into a fresh vector (convenience for tests and small replies).
pub fn to_vec<T: Xdr>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    value.encode(&mut out);
    out
}

/// Decodes exactly one `T` from `bytes`, rejecting trailing bytes.
pub fn from_slice<T: Xdr>(bytes: &[u8]) -> XdrResult<T> {
    let mut dec = Decoder::new(bytes);
    let v = T::decode(&mut dec)?;
    dec.finish()?;
    Ok(v)
}

/// Declares a plain XDR struct (fields in wire order) with `Xdr` implemented field by field.
macro_rules! xdr_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }
        impl $crate::xdr::Xdr for $name {
            fn encode(&self, out: &mut Vec<u8>) {
                $( $crate::xdr::Xdr::encode(&self.$field, out); )*
            }
            fn decode(dec: &mut $crate::xdr::Decoder<'_>) -> $crate::xdr::XdrResult<Self> {
                Ok($name { $( $field: <$ty as $crate::xdr::Xdr>::decode(dec)? ),* })
            }
        }
        #[cfg(test)]
        impl $crate::arb::Arb for $name {
            fn arb(_g: &mut $crate::arb::Gen) -> Self {
                $name { $( $field: <$ty as $crate::arb::Arb>::arb(_g) ),* }
            }
        }
    };
}

/// Declares a C-like XDR enum (u32 discriminants); unknown values decode to an error.
macro_rules! xdr_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value ),*
        }
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// The variant with wire value `v`, if any.
            pub fn from_u32(v: u32) -> Option<Self> {
                match v {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }
        }
        impl $crate::xdr::Xdr for $name {
            fn encode(&self, out: &mut Vec<u8>) {
                $crate::xdr::XdrWrite::put_u32(out, *self as u32)
            }
            fn decode(dec: &mut $crate::xdr::Decoder<'_>) -> $crate::xdr::XdrResult<Self> {
                let value = dec.u32()?;
                $name::from_u32(value).ok_or($crate::xdr::XdrError::BadDiscriminant {
                    what: stringify!($name),
                    value,
                })
            }
        }
        #[cfg(test)]
        impl $crate::arb::Arb for $name {
            fn arb(g: &mut $crate::arb::Gen) -> Self {
                Self::ALL[g.below(Self::ALL.len())]
            }
        }
    };
}

pub(crate) use xdr_enum;
pub(crate) use xdr_struct;

/// Declares a bounded byte-string newtype (names, paths, opaque handles) with XDR encoding.
macro_rules! xdr_bytes {
    (
        $(#[$meta:meta])*
        pub struct $name:ident; max = $max:expr;
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub struct $name(Vec<u8>);
        impl $name {
            /// Maximum length in bytes.
            pub const MAX_BYTES: usize = $max;
            /// Wraps `bytes`; `None` if longer than the maximum.
            pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Self> {
                let bytes = bytes.into();
                (bytes.len() <= Self::MAX_BYTES).then_some($name(bytes))
            }
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }
            /// Consumes the wrapper.
            pub fn into_bytes(self) -> Vec<u8> {
                self.0
            }
        }
        impl $crate::xdr::Xdr for $name {
            fn encode(&self, out: &mut Vec<u8>) {
                assert!(self.0.len() <= Self::MAX_BYTES);
                $crate::xdr::XdrWrite::put_opaque(out, &self.0)
            }
            fn decode(dec: &mut $crate::xdr::Decoder<'_>) -> $crate::xdr::XdrResult<Self> {
                Ok($name(dec.opaque_vec(stringify!($name), Self::MAX_BYTES)?))
            }
        }
        #[cfg(test)]
        impl $crate::arb::Arb for $name {
            fn arb(g: &mut $crate::arb::Gen) -> Self {
                $name(g.bytes(Self::MAX_BYTES))
            }
        }
    };
}

pub(crate) use xdr_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_length_rejected_before_allocation() {
        // 0xFFFF_FFFF length and nothing behind it: must fail on the bound, not allocate.
        let bytes = [0xff, 0xff, 0xff, 0xff];
        let err = Decoder::new(&bytes).opaque("x", 1024).unwrap_err();
        assert!(matches!(err, XdrError::TooLong { .. }));
        // Within the bound but beyond the data: truncated, before allocation.
        let bytes = [0, 0, 4, 0];
        let err = Decoder::new(&bytes).opaque("x", 1024).unwrap_err();
        assert!(matches!(err, XdrError::Truncated { .. }));
        // Arrays: the count times the element size is checked against the bytes left.
        let bytes = [0, 0, 0, 16];
        let err = Decoder::new(&bytes)
            .array("a", 16, 4, |d| d.u32())
            .unwrap_err();
        assert!(matches!(err, XdrError::Truncated { .. }));
    }

    #[test]
    fn opaque_padding_and_range() {
        let mut out = Vec::new();
        out.put_u32(7);
        out.put_opaque(b"abcde");
        assert_eq!(out.len(), 4 + 4 + 8);
        let mut dec = Decoder::new(&out);
        assert_eq!(dec.u32().unwrap(), 7);
        let r = dec.opaque_range("x", 16).unwrap();
        assert_eq!(r, 8..13);
        assert_eq!(&out[r], b"abcde");
        dec.finish().unwrap();
    }

    #[test]
    fn bool_rejects_other_values() {
        let bytes = [0, 0, 0, 2];
        assert!(Decoder::new(&bytes).bool().is_err());
    }

    #[test]
    fn list_bound_enforced() {
        let mut out = Vec::new();
        for i in 0..5u32 {
            out.put_bool(true);
            out.put_u32(i);
        }
        out.put_bool(false);
        let mut dec = Decoder::new(&out);
        assert_eq!(dec.list("l", 5, |d| d.u32()).unwrap(), vec![0, 1, 2, 3, 4]);
        let mut dec = Decoder::new(&out);
        assert!(matches!(
            dec.list("l", 4, |d| d.u32()),
            Err(XdrError::TooLong { .. })
        ));
    }
}
