//! Browser driver (wasm-bindgen, web-sys) around peer-core. Not built yet: see issue 5.
