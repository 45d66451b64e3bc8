//! Thread priority of the telemetry threads (pipeline, SQLite writer, OTLP exporters).

/// Lowers the calling thread's CPU priority to `nice` (1 to 19; Linux only, elsewhere and for 0
/// nothing happens), so that telemetry work yields the CPU to request handling when both want
/// it, and uses it fully when it is free. The change cannot be undone without privileges.
pub fn set_nice(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice != 0
        && let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
    {
        tracing::debug!("cannot lower the priority of a telemetry thread: {e}");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn a_thread_given_a_nice_value_runs_with_it() {
        let nice = std::thread::spawn(|| {
            super::set_nice(7);
            // Field 19 of /proc/thread-self/stat is the nice value.
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
            after_comm
                .split(' ')
                .nth(16)
                .unwrap()
                .parse::<i32>()
                .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(nice, 7);
    }
}
