//! CPU time of a process tree (a headless Chromium and everything it started), from /proc, by
//! Chromium process type: what `cargo xtask bench browser-cpu` compares between P2P on and off.
//!
//! A process's own time is `utime + stime`; the time of its children that exited and were
//! waited for is in its `cutime + cstime`. Summing both over the live tree counts every process
//! that ever ran in it once, so the difference of two samples is the tree's CPU time in between
//! (as long as the root itself lives).

use std::collections::{BTreeMap, HashMap};

/// Linux reports CPU times in clock ticks of `USER_HZ`, 100 on every Linux ABI.
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds of a process tree by process kind (`browser`, `renderer`, `gpu`, `network`,
/// `utility`, `zygote`, `other`).
pub type TreeCpu = BTreeMap<String, f64>;

struct Proc {
    ppid: u32,
    /// Own + waited-for children's CPU ticks.
    ticks: f64,
}

fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and parentheses) start after the
    // last ')': state, ppid, ... utime is the 12th of them, then stime, cutime, cstime.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Some(Proc {
        ppid: f.get(1)?.parse().ok()?,
        ticks: n(11) + n(12) + n(13) + n(14),
    })
}

/// What a Chromium process is, from its command line.
fn kind(pid: u32) -> String {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return "other".into();
    };
    // Chromium rewrites its child processes' title: their arguments then read as one string
    // separated by spaces instead of NULs.
    let args: Vec<String> = cmd
        .split(|b| *b == 0 || *b == b' ')
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(name).map(str::to_owned))
    };
    match flag("--type=").as_deref() {
        None if args.first().is_some_and(|a| a.ends_with("timeout")) => "other".into(),
        None => "browser".into(),
        Some("renderer") => "renderer".into(),
        Some("gpu-process") => "gpu".into(),
        Some("zygote") => "zygote".into(),
        Some("utility") => {
            if flag("--utility-sub-type=").is_some_and(|s| s.contains("NetworkService")) {
                "network".into()
            } else {
                "utility".into()
            }
        }
        Some(_) => "other".into(),
    }
}

/// CPU seconds so far of `root` and all its descendants, by process kind.
pub fn tree_cpu(root: u32) -> TreeCpu {
    let mut procs: HashMap<u32, Proc> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(p) = read_proc(pid)
            {
                procs.insert(pid, p);
            }
        }
    }
    let mut out = TreeCpu::new();
    for (&pid, p) in &procs {
        // Walk up to `root` (bounded: a pid cycle cannot happen, but a racy read could).
        let (mut cur, mut hops, mut inside) = (pid, 0, false);
        while hops < 64 {
            if cur == root {
                inside = true;
                break;
            }
            match procs.get(&cur) {
                Some(q) if q.ppid != 0 && q.ppid != cur => cur = q.ppid,
                _ => break,
            }
            hops += 1;
        }
        if inside {
            *out.entry(kind(pid)).or_default() += p.ticks / TICKS_PER_S;
        }
    }
    out
}

/// `b - a`, kind by kind (a kind missing from `a` counts from zero).
pub fn diff(a: &TreeCpu, b: &TreeCpu) -> TreeCpu {
    b.iter()
        .map(|(k, v)| (k.clone(), (v - a.get(k).copied().unwrap_or(0.0)).max(0.0)))
        .collect()
}

/// The sum over all kinds.
pub fn total(t: &TreeCpu) -> f64 {
    t.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_child_that_ran_and_exited() {
        // This process sleeps in `wait` while the child burns CPU: the tree's time grows by the
        // child's, which only its `cutime` still holds once it has been waited for.
        let me = std::process::id();
        let before = total(&tree_cpu(me));
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh");
        assert!(status.success());
        let after = total(&tree_cpu(me));
        assert!(after - before > 0.1, "{before} -> {after}");
        assert!(tree_cpu(u32::MAX).is_empty());
    }
}
