//! What the load generator reads about processes from `/proc`: memory and CPU time.

/// The resident set size of process `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|err| format!("cannot read /proc/{pid}/status: {err}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time (user + system) process `pid` has used, in seconds, from `/proc/PID/stat`.
/// `self` reads this process.
pub fn cpu_seconds(pid: &str) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|err| format!("cannot read /proc/{pid}/stat: {err}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |n: usize| -> Result<u64, String> {
        fields
            .get(n)
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| format!("malformed /proc/{pid}/stat"))
    };
    // Linux reports these in USER_HZ, which is 100 on every architecture it supports.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Total CPU seconds of several processes.
pub fn total_cpu_seconds(pids: &[u32]) -> Result<f64, String> {
    pids.iter().map(|pid| cpu_seconds(&pid.to_string())).sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let mut spin = 0u64;
        for i in 0..50_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        std::hint::black_box(spin);
        assert!(super::cpu_seconds("self").unwrap() > 0.0);
        assert!(super::rss_kib(std::process::id()).unwrap() > 0);
    }
}
