//! Spinel runtime.
