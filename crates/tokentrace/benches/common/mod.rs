//! What the benches of the binary share: their options (clap), ports, waiting for a server, and
//! stopping one the way an operator does (SIGTERM).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokentrace_otlp::proto::common::v1::{AnyValue, KeyValue, any_value};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// An OTLP attribute.
pub fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// The bench's options. `cargo bench` passes `--bench` to every bench binary; it is dropped.
pub fn args<T: clap::Parser>() -> T {
    T::parse_from(std::env::args().filter(|a| a != "--bench"))
}

/// A port nothing listens on now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits (at most 30 s) until something accepts connections on `port`.
pub fn wait_listening(port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listening on {port}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs this bench binary again with `args` (one of its helper roles, e.g. a fake upstream on
/// `port`) and waits until it listens there.
pub fn spawn_helper(args: &[&str], port: u16) -> Result<Child, Error> {
    let child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(Stdio::null())
        .spawn()?;
    wait_listening(port)?;
    Ok(child)
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS:`, `VmHWM:`); 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Stops a server with SIGTERM, as an operator would, and waits for it to exit.
pub fn terminate(child: &mut Child) -> Result<(), Error> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    Ok(())
}
