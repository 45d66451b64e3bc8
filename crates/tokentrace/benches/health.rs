//! `/v1/health` while the gateway counts the tokens of big prompts: `tokentrace serve` (the echo
//! provider, which counts prompt tokens with the embedded tokenizer) gets chat requests with
//! prompts of `--prompt-kb` from `--clients` clients at once, while another client polls
//! `/v1/health`. The baseline is the same polling with no chats, in the same run; the figures
//! are the health latencies (p50, p99, max) of both and their ratio.
//!
//! Run: `cargo bench -p tokentrace --bench health` (options: `-- --clients 4 --prompt-kb 900
//! --seconds 10`).

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Error, free_port, terminate, wait_listening};

#[derive(clap::Parser)]
struct Args {
    /// Clients sending big chats at once.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Prompt size of each chat, in KB.
    #[arg(long, default_value_t = 900)]
    prompt_kb: usize,
    /// Seconds of polling, with and without the chats.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Polls `/v1/health` for `seconds`; the latencies, sorted.
fn poll(base: &str, seconds: u64) -> Result<Vec<Duration>, Error> {
    let http = reqwest::blocking::Client::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut times = Vec::new();
    while Instant::now() < end {
        let at = Instant::now();
        let r = http.get(format!("{base}/v1/health")).send()?;
        r.bytes()?;
        times.push(at.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    times.sort();
    Ok(times)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<(), Error> {
    let args: Args = common::args();
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut server = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args(["serve", "--port", &port.to_string()])
        .env("TELEMETRY_SINKS", "sqlite")
        .env("SQLITE_STORE_DIR", dir.path())
        .stderr(Stdio::null())
        .spawn()?;
    wait_listening(port)?;
    let base = format!("http://127.0.0.1:{port}");
    let prompt = "word ".repeat(args.prompt_kb * 1024 / 5);
    let body = serde_json::to_vec(&serde_json::json!({
        "model": "echo", "max_tokens": 5,
        "messages": [{"role": "user", "content": prompt}]
    }))?;
    println!(
        "/v1/health polled for {} s, alone and while {} clients send {} KB chats",
        args.seconds, args.clients, args.prompt_kb
    );
    let alone = poll(&base, args.seconds)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..args.clients {
        let (stop, body, base) = (stop.clone(), body.clone(), base.clone());
        senders.push(std::thread::spawn(move || -> Result<u64, Error> {
            let http = reqwest::blocking::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(format!("{base}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()?;
                r.bytes()?;
                n += 1;
            }
            Ok(n)
        }));
    }
    let loaded = poll(&base, args.seconds)?;
    stop.store(true, Ordering::Relaxed);
    let mut chats = 0;
    for s in senders {
        chats += s.join().map_err(|_| "a sender panicked")??;
    }
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>7}",
        "", "p50 ms", "p99 ms", "max ms", "polls"
    );
    for (name, t) in [("alone", &alone), ("during big chats", &loaded)] {
        println!(
            "{name:<24} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            ms(percentile(t, 0.5)),
            ms(percentile(t, 0.99)),
            ms(percentile(t, 1.0)),
            t.len()
        );
    }
    println!(
        "ratio of p99 (during / alone): {:.1}; chats answered meanwhile: {chats}",
        ms(percentile(&loaded, 0.99)) / ms(percentile(&alone, 0.99)).max(1e-6)
    );
    terminate(&mut server)?;
    Ok(())
}
