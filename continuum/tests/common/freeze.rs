//! Freezing a region's processes as a paused VM would: SIGSTOP of a process and all its
//! descendants (the daemon with its fence watchdog; the postmaster with its backends and WAL
//! senders), SIGCONT later.

/// `pid` and every descendant, parents first, from `/proc/*/stat`.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parents.push((child, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    out
}

pub fn signal_all(pids: &[u32], sig: i32) {
    for pid in pids {
        // SAFETY: kill has no memory preconditions; the pids are this test's processes.
        unsafe { libc::kill(*pid as i32, sig) };
    }
}

/// The frozen processes; [`Frozen::thaw`] (or drop) sends SIGCONT.
pub struct Frozen(Vec<u32>);

impl Frozen {
    /// Freezes every process of the trees rooted at `roots`.
    pub fn roots(roots: &[u32]) -> Frozen {
        let pids: Vec<u32> = roots.iter().flat_map(|r| tree(*r)).collect();
        signal_all(&pids, libc::SIGSTOP);
        Frozen(pids)
    }

    pub fn thaw(mut self) {
        signal_all(&std::mem::take(&mut self.0), libc::SIGCONT);
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal_all(&self.0, libc::SIGCONT);
    }
}
