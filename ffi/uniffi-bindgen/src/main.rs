//! `uniffi-bindgen`: generates the Kotlin, Swift and Python bindings of
//! `spinel-ffi` from the built library (`generate --library path/to/libspinel_ffi.so`).
//!
//! It lives in the workspace so that the generator is always the exact uniffi
//! version the library was built with; bindings from another version fail
//! their contract check at load.

fn main() {
    uniffi::uniffi_bindgen_main()
}
