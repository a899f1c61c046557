//! The CPU time a process has used, from `/proc/PID/stat` (Linux).

/// The CPU time (user and system) process `pid` has used so far, in seconds (0 when
/// it cannot be read). `/proc/PID/stat` still holds it while the process is a zombie,
/// exited and not yet reaped.
pub fn cpu_secs(pid: u32) -> f64 {
    proc_stat(pid).map_or(0.0, |(_, ticks)| {
        ticks as f64 / rustix::param::clock_ticks_per_second() as f64
    })
}

/// Process `pid`'s state letter and CPU ticks (utime + stime), from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((state, ticks))
}

/// Runs `cmd` to its end and returns its exit status and the CPU time it used, in
/// seconds (read once it has exited, before it is reaped).
pub fn run_timed(
    cmd: &mut std::process::Command,
) -> std::io::Result<(std::process::ExitStatus, f64)> {
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let mut used = 0.0;
    while let Some((state, _)) = proc_stat(pid) {
        used = cpu_secs(pid);
        if state == 'Z' {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok((child.wait()?, used))
}
