//! Whether a browser test runs: Chromium must be there. Missing, the test is skipped with a
//! message on a developer's machine, and fails under `CI` (where `cargo xtask test` installs
//! it, so a missing browser is a broken setup, not a reason to pass).

use std::path::Path;

/// `true` when `chromium` exists; `false` (after saying SKIPPED) when it does not and `CI` is
/// unset. Panics when it does not and `CI` is set.
pub fn chromium_available(chromium: &str) -> bool {
    if Path::new(chromium).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{chromium} is missing and CI is set: install chromium (cargo xtask test does)");
    }
    eprintln!("SKIPPED: {chromium} not found (apt-get install chromium); set CI=1 to fail instead");
    false
}
