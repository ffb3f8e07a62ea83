//! Short names for the wasm module's imports.
//!
//! wasm-bindgen names each import `__wbg_<method>_<16 hex digits>` and the glue JS keys its
//! import object by the same strings: ≈ 4 KB of names, written twice, whose hex digits gzip
//! cannot fold. This renames every such import to a short name (`a`, `b`, … `Z`, `aa`, …) and
//! its import module (`./p2p-cdn_bg.js`) to `w`, in the wasm's import section and in the glue
//! alike (−4 KB gzip measured). Nothing else in the module changes: function indices stay.
//!
//! The glue must hold each renamed string exactly once, as an object key (`name:`); when the
//! generated glue does not look like that, nothing is renamed.

use anyhow::{Context, Result, bail, ensure};

/// The import module wasm-bindgen's glue provides.
const MODULE: &str = "./p2p-cdn_bg.js";
/// Its short name.
const SHORT_MODULE: &str = "w";

fn read_leb(b: &[u8], i: &mut usize) -> Result<u32> {
    let mut r: u64 = 0;
    let mut shift = 0;
    loop {
        let x = *b.get(*i).context("truncated LEB128")?;
        *i += 1;
        r |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return u32::try_from(r).context("LEB128 over u32");
        }
        shift += 7;
        ensure!(shift < 35, "LEB128 too long");
    }
}

fn write_leb(out: &mut Vec<u8>, mut n: u32) {
    loop {
        let x = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(x);
            return;
        }
        out.push(x | 0x80);
    }
}

fn read_name<'a>(b: &'a [u8], i: &mut usize) -> Result<&'a str> {
    let len = read_leb(b, i)? as usize;
    let s = b.get(*i..*i + len).context("truncated name")?;
    *i += len;
    std::str::from_utf8(s).context("name is not UTF-8")
}

fn write_name(out: &mut Vec<u8>, s: &str) {
    write_leb(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// Skips an import's description (what follows its two names).
fn skip_import_desc(b: &[u8], i: &mut usize) -> Result<()> {
    let kind = *b.get(*i).context("truncated import")?;
    *i += 1;
    let limits = |i: &mut usize| -> Result<()> {
        let flags = read_leb(b, i)?;
        read_leb(b, i)?;
        if flags & 1 != 0 {
            read_leb(b, i)?;
        }
        Ok(())
    };
    match kind {
        0 => {
            read_leb(b, i)?;
        }
        1 => {
            *i += 1; // reference type
            limits(i)?;
        }
        2 => limits(i)?,
        3 => *i += 2, // value type, mutability
        4 => {
            *i += 1; // tag attribute
            read_leb(b, i)?;
        }
        k => bail!("unknown import kind {k}"),
    }
    ensure!(*i <= b.len(), "truncated import");
    Ok(())
}

/// `a`..`z`, `A`..`Z`, `aa`, `ab`, …
fn short_name(mut k: usize) -> String {
    const ALPHABET: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut s = Vec::new();
    k += 1;
    while k > 0 {
        k -= 1;
        s.push(ALPHABET[k % 52]);
        k /= 52;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// A wasm-bindgen import name with a hash suffix: `…_` and 16 lower-case hex digits.
fn is_hashed(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 17
        && b[b.len() - 17] == b'_'
        && b[b.len() - 16..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The module with its imports renamed, and the glue to match.
pub fn shorten_imports(wasm: &[u8], js: &str) -> Result<(Vec<u8>, String)> {
    ensure!(
        wasm.len() >= 8 && wasm[..4] == *b"\0asm",
        "not a wasm module"
    );
    let mut out = wasm[..8].to_vec();
    let mut js = js.to_string();
    let mut renamed = 0;
    let mut i = 8;
    while i < wasm.len() {
        let id = wasm[i];
        i += 1;
        let len = read_leb(wasm, &mut i)? as usize;
        let body = wasm.get(i..i + len).context("truncated section")?;
        i += len;
        if id != 2 {
            out.push(id);
            write_leb(&mut out, len as u32);
            out.extend_from_slice(body);
            continue;
        }
        let mut j = 0;
        let count = read_leb(body, &mut j)?;
        let mut section = Vec::with_capacity(body.len());
        write_leb(&mut section, count);
        for _ in 0..count {
            let module = read_name(body, &mut j)?;
            let name = read_name(body, &mut j)?;
            let start = j;
            skip_import_desc(body, &mut j)?;
            if module == MODULE && is_hashed(name) {
                ensure!(
                    js.matches(name).count() == 1 && js.contains(&format!("{name}:")),
                    "import {name} is not a single object key in the glue"
                );
                let short = short_name(renamed);
                renamed += 1;
                js = js.replacen(&format!("{name}:"), &format!("{short}:"), 1);
                write_name(&mut section, SHORT_MODULE);
                write_name(&mut section, &short);
            } else {
                write_name(
                    &mut section,
                    if module == MODULE {
                        SHORT_MODULE
                    } else {
                        module
                    },
                );
                write_name(&mut section, name);
            }
            section.extend_from_slice(&body[start..j]);
        }
        ensure!(j == body.len(), "import section has trailing bytes");
        out.push(id);
        write_leb(&mut out, section.len() as u32);
        out.extend_from_slice(&section);
    }
    let key = format!("\"{MODULE}\":");
    ensure!(
        js.matches(MODULE).count() == 1 && js.contains(&key),
        "the glue does not key its imports by {MODULE} once"
    );
    js = js.replacen(&key, &format!("\"{SHORT_MODULE}\":"), 1);
    Ok((out, js))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module importing `./p2p-cdn_bg.js`.`__wbg_f_0123456789abcdef` (a function) and
    /// `env`.`mem` (a memory), and its glue.
    fn sample() -> (Vec<u8>, String) {
        let mut w = b"\0asm\x01\0\0\0".to_vec();
        // type section: one type, () -> ()
        w.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]);
        let mut imports = Vec::new();
        write_leb(&mut imports, 2);
        write_name(&mut imports, MODULE);
        write_name(&mut imports, "__wbg_f_0123456789abcdef");
        imports.extend_from_slice(&[0, 0]);
        write_name(&mut imports, "env");
        write_name(&mut imports, "mem");
        imports.extend_from_slice(&[2, 1, 1, 2]);
        w.push(2);
        write_leb(&mut w, imports.len() as u32);
        w.extend_from_slice(&imports);
        // custom section after it, kept as is
        w.extend_from_slice(&[0, 2, 1, b'x']);
        let js = format!(
            "const i = {{ __wbg_f_0123456789abcdef: function() {{}} }}; return {{ \"{MODULE}\": i }};"
        );
        (w, js)
    }

    fn imports(w: &[u8]) -> Vec<(String, String)> {
        let mut i = 8;
        let mut v = Vec::new();
        while i < w.len() {
            let id = w[i];
            i += 1;
            let len = read_leb(w, &mut i).expect("len") as usize;
            if id == 2 {
                let b = &w[i..i + len];
                let mut j = 0;
                for _ in 0..read_leb(b, &mut j).expect("count") {
                    let m = read_name(b, &mut j).expect("module").to_string();
                    let n = read_name(b, &mut j).expect("name").to_string();
                    skip_import_desc(b, &mut j).expect("desc");
                    v.push((m, n));
                }
            }
            i += len;
        }
        v
    }

    #[test]
    fn renames_in_both() {
        let (w, js) = sample();
        let (w2, js2) = shorten_imports(&w, &js).expect("shorten");
        assert_eq!(
            imports(&w2),
            [("w".into(), "a".into()), ("env".into(), "mem".into())]
        );
        assert_eq!(js2, "const i = { a: function() {} }; return { \"w\": i };");
        assert!(w2.ends_with(&[0, 2, 1, b'x']));
    }

    #[test]
    fn refuses_unexpected_glue() {
        let (w, js) = sample();
        let twice = format!("{js} __wbg_f_0123456789abcdef");
        assert!(shorten_imports(&w, &twice).is_err());
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name(0), "a");
        assert_eq!(short_name(51), "Z");
        assert_eq!(short_name(52), "aa");
        assert!(is_hashed("__wbg_set_id_7d8f8d23f234a90a"));
        assert!(!is_hashed("__wbindgen_init_externref_table"));
    }
}
