//! GGUF metadata values: the thirteen value types, scalars, strings and
//! (possibly nested) arrays.
//!
//! Values read from a file borrow from it (`Cow::Borrowed`); values built for
//! [`GgufWriter`](super::GgufWriter) may own their data. Arrays of fixed-size
//! elements keep their little-endian bytes as they are in the file and decode
//! an element when it is asked for, so a 49 152-entry `token_type` array costs
//! no allocation to read.

use std::borrow::Cow;
use std::fmt;

/// A GGUF metadata value type, with its id as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// Every value type, in id order.
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// The type with GGUF id `id`, if there is one.
    pub const fn from_id(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// The GGUF id.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The name the GGUF specification (and the `gguf` Python package) uses:
    /// `"UINT32"`, `"FLOAT32"`, `"STRING"` …
    pub const fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "UINT8",
            ValueType::I8 => "INT8",
            ValueType::U16 => "UINT16",
            ValueType::I16 => "INT16",
            ValueType::U32 => "UINT32",
            ValueType::I32 => "INT32",
            ValueType::F32 => "FLOAT32",
            ValueType::Bool => "BOOL",
            ValueType::String => "STRING",
            ValueType::Array => "ARRAY",
            ValueType::U64 => "UINT64",
            ValueType::I64 => "INT64",
            ValueType::F64 => "FLOAT64",
        }
    }

    /// A short Rust-style name (`"u32"`, `"f32"`, `"string"` …) for human output.
    pub const fn short_name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// Bytes per value for the fixed-size types; `None` for strings and arrays.
    pub const fn fixed_size(self) -> Option<usize> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// The fewest bytes one value of this type takes in a file: its fixed
    /// size, 8 for a string (the length), 12 for an array (type + length).
    pub(crate) const fn min_encoded_size(self) -> usize {
        match self.fixed_size() {
            Some(n) => n,
            None => match self {
                ValueType::String => 8,
                _ => 12,
            },
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A fixed-size GGUF scalar type: `u8`, `i8`, `u16`, `i16`, `u32`, `i32`,
/// `u64`, `i64`, `f32`, `f64` or `bool`. Sealed.
pub trait Scalar: sealed::Sealed + Copy + 'static {
    /// The GGUF value type.
    const TYPE: ValueType;
    /// Decodes one value from the first `Self::TYPE.fixed_size()` bytes,
    /// little-endian. (Bools are validated when a file is parsed; here any
    /// nonzero byte reads as `true`.)
    ///
    /// # Panics
    ///
    /// If `bytes` is shorter than that.
    fn read_le(bytes: &[u8]) -> Self;
    /// Appends the little-endian encoding.
    fn write_le(self, out: &mut Vec<u8>);
    /// Wraps the value.
    fn into_value(self) -> Value<'static>;
    /// Unwraps a value of exactly this type.
    fn from_value(v: &Value<'_>) -> Option<Self>;
}

macro_rules! scalar {
    ($t:ty, $variant:ident, $n:literal) => {
        impl sealed::Sealed for $t {}
        impl Scalar for $t {
            const TYPE: ValueType = ValueType::$variant;
            fn read_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; $n];
                a.copy_from_slice(&bytes[..$n]);
                <$t>::from_le_bytes(a)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn into_value(self) -> Value<'static> {
                Value::$variant(self)
            }
            fn from_value(v: &Value<'_>) -> Option<Self> {
                match v {
                    Value::$variant(x) => Some(*x),
                    _ => None,
                }
            }
        }
        impl From<$t> for Value<'_> {
            fn from(x: $t) -> Self {
                Value::$variant(x)
            }
        }
    };
}

scalar!(u8, U8, 1);
scalar!(i8, I8, 1);
scalar!(u16, U16, 2);
scalar!(i16, I16, 2);
scalar!(u32, U32, 4);
scalar!(i32, I32, 4);
scalar!(u64, U64, 8);
scalar!(i64, I64, 8);
scalar!(f32, F32, 4);
scalar!(f64, F64, 8);

impl sealed::Sealed for bool {}
impl Scalar for bool {
    const TYPE: ValueType = ValueType::Bool;
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn into_value(self) -> Value<'static> {
        Value::Bool(self)
    }
    fn from_value(v: &Value<'_>) -> Option<Self> {
        match v {
            Value::Bool(x) => Some(*x),
            _ => None,
        }
    }
}
impl From<bool> for Value<'_> {
    fn from(x: bool) -> Self {
        Value::Bool(x)
    }
}

/// One metadata value.
///
/// Equality compares floats by bit pattern, so a value always equals itself
/// (NaN included) and `0.0 != -0.0`: the relation "reads back as what was
/// written".
#[derive(Clone, Debug)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(Cow<'a, str>),
    Array(Array<'a>),
}

impl<'a> Value<'a> {
    /// The GGUF value type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// The value as `T` if it is exactly of type `T`.
    pub fn as_scalar<T: Scalar>(&self) -> Option<T> {
        T::from_value(self)
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, if this is an array.
    pub fn as_array(&self) -> Option<&Array<'a>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Any integer type holding a non-negative value, widened to `u64`.
    pub fn as_uint(&self) -> Option<u64> {
        match *self {
            Value::U8(x) => Some(x.into()),
            Value::U16(x) => Some(x.into()),
            Value::U32(x) => Some(x.into()),
            Value::U64(x) => Some(x),
            Value::I8(x) => u64::try_from(x).ok(),
            Value::I16(x) => u64::try_from(x).ok(),
            Value::I32(x) => u64::try_from(x).ok(),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// Copies borrowed data so the value no longer borrows.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::U8(x) => Value::U8(x),
            Value::I8(x) => Value::I8(x),
            Value::U16(x) => Value::U16(x),
            Value::I16(x) => Value::I16(x),
            Value::U32(x) => Value::U32(x),
            Value::I32(x) => Value::I32(x),
            Value::U64(x) => Value::U64(x),
            Value::I64(x) => Value::I64(x),
            Value::F32(x) => Value::F32(x),
            Value::F64(x) => Value::F64(x),
            Value::Bool(x) => Value::Bool(x),
            Value::String(s) => Value::String(Cow::Owned(s.into_owned())),
            Value::Array(a) => Value::Array(a.into_owned()),
        }
    }

    /// A description of the type for error messages: `"UINT32"`,
    /// `"ARRAY of STRING"`.
    pub fn type_description(&self) -> String {
        match self {
            Value::Array(a) => format!("ARRAY of {}", a.elem_type()),
            v => v.value_type().name().to_string(),
        }
    }
}

impl PartialEq for Value<'_> {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (U8(a), U8(b)) => a == b,
            (I8(a), I8(b)) => a == b,
            (U16(a), U16(b)) => a == b,
            (I16(a), I16(b)) => a == b,
            (U32(a), U32(b)) => a == b,
            (I32(a), I32(b)) => a == b,
            (U64(a), U64(b)) => a == b,
            (I64(a), I64(b)) => a == b,
            (F32(a), F32(b)) => a.to_bits() == b.to_bits(),
            (F64(a), F64(b)) => a.to_bits() == b.to_bits(),
            (Bool(a), Bool(b)) => a == b,
            (String(a), String(b)) => a == b,
            (Array(a), Array(b)) => a == b,
            _ => false,
        }
    }
}
impl Eq for Value<'_> {}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::String(Cow::Borrowed(s))
    }
}
impl From<String> for Value<'_> {
    fn from(s: String) -> Self {
        Value::String(Cow::Owned(s))
    }
}
impl<'a> From<Array<'a>> for Value<'a> {
    fn from(a: Array<'a>) -> Self {
        Value::Array(a)
    }
}

/// A GGUF array: a length, one element type, and the elements.
///
/// Arrays of arrays are allowed; each inner array has its own element type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Array<'a> {
    elem: ValueType,
    len: usize,
    items: Items<'a>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Items<'a> {
    /// `len` fixed-size elements, little-endian, exactly `len * size` bytes
    /// (bools are 0 or 1).
    Scalars(Cow<'a, [u8]>),
    Strings(Vec<Cow<'a, str>>),
    Arrays(Vec<Array<'a>>),
}

impl<'a> Array<'a> {
    /// An array of scalars.
    pub fn from_scalars<T: Scalar>(items: &[T]) -> Array<'static> {
        let size = T::TYPE.fixed_size().unwrap_or(0);
        let mut bytes = Vec::with_capacity(items.len().saturating_mul(size));
        for &x in items {
            x.write_le(&mut bytes);
        }
        Array {
            elem: T::TYPE,
            len: items.len(),
            items: Items::Scalars(Cow::Owned(bytes)),
        }
    }

    /// An array of strings.
    pub fn from_strings<S, I>(items: I) -> Array<'a>
    where
        S: Into<Cow<'a, str>>,
        I: IntoIterator<Item = S>,
    {
        let v: Vec<Cow<'a, str>> = items.into_iter().map(Into::into).collect();
        Array {
            elem: ValueType::String,
            len: v.len(),
            items: Items::Strings(v),
        }
    }

    /// An array of arrays.
    pub fn from_arrays(items: Vec<Array<'a>>) -> Array<'a> {
        Array {
            elem: ValueType::Array,
            len: items.len(),
            items: Items::Arrays(items),
        }
    }

    /// Wraps `len` elements of fixed-size type `elem` stored little-endian in
    /// `bytes` (the reader checked sizes and bools).
    pub(crate) fn scalars_raw(elem: ValueType, len: usize, bytes: &'a [u8]) -> Array<'a> {
        debug_assert_eq!(Some(bytes.len()), elem.fixed_size().map(|s| s * len));
        Array {
            elem,
            len,
            items: Items::Scalars(Cow::Borrowed(bytes)),
        }
    }

    pub(crate) fn strings_raw(items: Vec<Cow<'a, str>>) -> Array<'a> {
        Array::from_strings(items)
    }

    /// The element type.
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements as `T`, if `T` is the element type.
    pub fn scalars<T: Scalar>(&self) -> Option<impl ExactSizeIterator<Item = T> + '_> {
        match &self.items {
            Items::Scalars(b) if self.elem == T::TYPE => {
                let size = T::TYPE.fixed_size().unwrap_or(1);
                Some(b.chunks_exact(size).map(T::read_le))
            }
            _ => None,
        }
    }

    /// The elements collected into a `Vec<T>`, if `T` is the element type.
    pub fn to_vec<T: Scalar>(&self) -> Option<Vec<T>> {
        self.scalars::<T>().map(Iterator::collect)
    }

    /// The little-endian bytes of a fixed-size element array.
    pub fn raw_bytes(&self) -> Option<&[u8]> {
        match &self.items {
            Items::Scalars(b) => Some(b),
            _ => None,
        }
    }

    /// The strings, if this is an array of strings.
    pub fn strings(&self) -> Option<impl ExactSizeIterator<Item = &str> + '_> {
        match &self.items {
            Items::Strings(v) => Some(v.iter().map(|s| &**s)),
            _ => None,
        }
    }

    /// The inner arrays, if this is an array of arrays.
    pub fn arrays(&self) -> Option<&[Array<'a>]> {
        match &self.items {
            Items::Arrays(v) => Some(v),
            _ => None,
        }
    }

    /// Element `i` as a [`Value`]. Strings borrow from `self`; an inner array
    /// is cloned (O(its size)).
    pub fn get(&self, i: usize) -> Option<Value<'_>> {
        if i >= self.len {
            return None;
        }
        Some(match &self.items {
            Items::Scalars(b) => {
                let size = self.elem.fixed_size()?;
                decode_scalar(self.elem, b.get(i * size..(i + 1) * size)?)?
            }
            Items::Strings(v) => Value::String(Cow::Borrowed(v.get(i)?)),
            Items::Arrays(v) => Value::Array(v.get(i)?.clone()),
        })
    }

    /// All elements as [`Value`]s (see [`Array::get`]).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Value<'_>> + '_ {
        (0..self.len).map(|i| self.get(i).expect("index below len"))
    }

    /// Copies borrowed data so the array no longer borrows.
    pub fn into_owned(self) -> Array<'static> {
        Array {
            elem: self.elem,
            len: self.len,
            items: match self.items {
                Items::Scalars(b) => Items::Scalars(Cow::Owned(b.into_owned())),
                Items::Strings(v) => {
                    Items::Strings(v.into_iter().map(|s| Cow::Owned(s.into_owned())).collect())
                }
                Items::Arrays(v) => Items::Arrays(v.into_iter().map(Array::into_owned).collect()),
            },
        }
    }

    /// Appends the file encoding (element type, length, elements).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.elem.id().to_le_bytes());
        out.extend_from_slice(&(self.len as u64).to_le_bytes());
        match &self.items {
            Items::Scalars(b) => out.extend_from_slice(b),
            Items::Strings(v) => {
                for s in v {
                    encode_str(s, out);
                }
            }
            Items::Arrays(v) => {
                for a in v {
                    a.encode(out);
                }
            }
        }
    }
}

/// Decodes a fixed-size value of type `t` from its little-endian bytes.
pub(crate) fn decode_scalar(t: ValueType, b: &[u8]) -> Option<Value<'static>> {
    if Some(b.len()) != t.fixed_size() {
        return None;
    }
    Some(match t {
        ValueType::U8 => u8::read_le(b).into_value(),
        ValueType::I8 => i8::read_le(b).into_value(),
        ValueType::U16 => u16::read_le(b).into_value(),
        ValueType::I16 => i16::read_le(b).into_value(),
        ValueType::U32 => u32::read_le(b).into_value(),
        ValueType::I32 => i32::read_le(b).into_value(),
        ValueType::U64 => u64::read_le(b).into_value(),
        ValueType::I64 => i64::read_le(b).into_value(),
        ValueType::F32 => f32::read_le(b).into_value(),
        ValueType::F64 => f64::read_le(b).into_value(),
        ValueType::Bool => bool::read_le(b).into_value(),
        ValueType::String | ValueType::Array => return None,
    })
}

pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Value<'_> {
    /// Appends the file encoding of the value (without its type id).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(x) => x.write_le(out),
            Value::I8(x) => x.write_le(out),
            Value::U16(x) => x.write_le(out),
            Value::I16(x) => x.write_le(out),
            Value::U32(x) => x.write_le(out),
            Value::I32(x) => x.write_le(out),
            Value::U64(x) => x.write_le(out),
            Value::I64(x) => x.write_le(out),
            Value::F32(x) => x.write_le(out),
            Value::F64(x) => x.write_le(out),
            Value::Bool(x) => x.write_le(out),
            Value::String(s) => encode_str(s, out),
            Value::Array(a) => a.encode(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for (i, t) in ValueType::ALL.into_iter().enumerate() {
            assert_eq!(t.id(), i as u32);
            assert_eq!(ValueType::from_id(t.id()), Some(t));
        }
        assert_eq!(ValueType::from_id(13), None);
    }

    #[test]
    fn array_accessors() {
        let a = Array::from_scalars(&[1u32, 2, 0xdead_beef]);
        assert_eq!(a.elem_type(), ValueType::U32);
        assert_eq!(a.to_vec::<u32>(), Some(vec![1, 2, 0xdead_beef]));
        assert_eq!(a.to_vec::<i32>(), None);
        assert!(a.strings().is_none());
        assert_eq!(a.get(2), Some(Value::U32(0xdead_beef)));
        assert_eq!(a.get(3), None);
        let s = Array::from_strings(["a", "bc"]);
        assert_eq!(s.strings().unwrap().collect::<Vec<_>>(), ["a", "bc"]);
        assert_eq!(s.get(1).unwrap().as_str(), Some("bc"));
        let n = Array::from_arrays(vec![a.clone(), s.clone()]);
        assert_eq!(n.arrays().unwrap()[1], s);
        assert_eq!(n.iter().count(), 2);
    }

    #[test]
    fn float_equality_is_bitwise() {
        assert_eq!(Value::F32(f32::NAN), Value::F32(f32::NAN));
        assert_ne!(Value::F64(0.0), Value::F64(-0.0));
        assert_ne!(Value::U32(1), Value::I32(1));
    }

    #[test]
    fn as_uint_widens_non_negative_integers() {
        assert_eq!(Value::U8(7).as_uint(), Some(7));
        assert_eq!(Value::I64(7).as_uint(), Some(7));
        assert_eq!(Value::I32(-1).as_uint(), None);
        assert_eq!(Value::F32(1.0).as_uint(), None);
    }
}
