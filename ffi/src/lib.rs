//! Foreign-language bindings for Spinel.
//!
//! Not built yet: the uniffi layer (Kotlin, Swift, Python) arrives with the
//! mobile SDK work. Today this crate only reports the library version.

/// The Spinel version this library was built from.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
