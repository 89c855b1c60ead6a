//! Benchmark: lines pushed per CPU-second from a file to a loopback Loki receiver, the shipper
//! against syslog-ng's `http()` destination (`scripts/bench-throughput`).
//!
//! The driver writes `--lines` lines of about 150 bytes (printable ASCII, no quotes or
//! backslashes: syslog-ng's hand-built Loki JSON is only valid for such lines), starts one
//! counting receiver ([`testkit::loki::Receiver`] with `store_entries(false)`, validating every
//! body) and runs each candidate in turn, as a child process reading the same file from its
//! beginning. When the receiver has counted every line of the run, the driver reads the child's
//! CPU time (user+sys, `/proc/PID/stat`) and peak RSS (`VmHWM`, `/proc/PID/status`) from the OS,
//! then stops it. Candidates alternate over `--rounds`; figures are medians. The last stdout
//! line is the contract's JSON.
//!
//! The `https` candidate is the JSON shipper pushing over TLS to a second receiver that serves
//! rustls with a certificate from a CA generated for the run ([`testkit::loki::pki`]) and
//! checks basic credentials: the shipper trusts it through `ca_file` and reads its password from
//! a file, as a production setup would. `--no-https` leaves it out.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testkit::loki::Receiver;
use testkit::loki::pki::TestCa;

const DEFAULT_LINES: u64 = 1_000_000;
const DEFAULT_ROUNDS: usize = 3;
/// A run that has not delivered every line by then has failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const LINE_BYTES: usize = 150;
/// Credentials of the https candidate (a throwaway receiver on loopback).
const BENCH_USER: &str = "bench";
const BENCH_PASSWORD: &str = "bench-password";

/// The 1-minute load average (`/proc/loadavg`), or NaN where it cannot be read.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

#[derive(Debug)]
struct Options {
    shipper: PathBuf,
    syslog_ng: PathBuf,
    lines: u64,
    rounds: usize,
    protobuf: bool,
    https: bool,
    keep: bool,
    /// TOML lines appended to the shipper's `[sink]` table (experiments: batch size, concurrency).
    sink_extra: String,
    /// Environment for the shipper only, `KEY=VALUE` (experiments: `MALLOC_ARENA_MAX=1`).
    shipper_env: Vec<(String, String)>,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        shipper: PathBuf::new(),
        syslog_ng: PathBuf::from("syslog-ng"),
        lines: DEFAULT_LINES,
        rounds: DEFAULT_ROUNDS,
        protobuf: true,
        https: true,
        keep: false,
        sink_extra: String::new(),
        shipper_env: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-protobuf" {
            options.protobuf = false;
            continue;
        }
        if flag == "--no-https" {
            options.https = false;
            continue;
        }
        if flag == "--keep" {
            options.keep = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("flag {flag} needs a value"))?;
        match flag.as_str() {
            "--shipper" => options.shipper = value.into(),
            "--sink-extra" => {
                options.sink_extra.push_str(&value);
                options.sink_extra.push('\n');
            }
            "--shipper-env" => {
                let (key, val) = value
                    .split_once('=')
                    .with_context(|| format!("--shipper-env {value:?}: expected KEY=VALUE"))?;
                options.shipper_env.push((key.to_owned(), val.to_owned()));
            }
            "--syslog-ng" => options.syslog_ng = value.into(),
            "--lines" => {
                options.lines = value
                    .parse()
                    .with_context(|| format!("--lines {value:?}: expected a number"))?
            }
            "--rounds" => {
                options.rounds = value
                    .parse()
                    .with_context(|| format!("--rounds {value:?}: expected a number"))?
            }
            other => bail!(
                "unknown flag {other:?}: use --shipper PATH [--syslog-ng PATH] [--lines N] [--rounds N] [--no-protobuf] [--no-https] [--keep] [--sink-extra TOML] [--shipper-env KEY=VALUE]"
            ),
        }
    }
    if options.shipper.as_os_str().is_empty() {
        bail!("--shipper PATH is required (the release shipper binary)");
    }
    if options.lines == 0 || options.rounds == 0 {
        bail!("--lines and --rounds must be at least 1");
    }
    Ok(options)
}

fn main() -> ExitCode {
    let run = parse_args().and_then(|options| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("building the runtime")?;
        runtime.block_on(run(options))
    });
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_throughput: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the OS reported for one run.
#[derive(Debug, Clone, Copy)]
struct Figures {
    wall_s: f64,
    cpu_s: f64,
    rss_mib: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidate {
    SyslogNg,
    ShipperJson,
    ShipperProtobuf,
    /// JSON over https with `ca_file` and basic auth, to the TLS receiver.
    ShipperHttps,
}

impl Candidate {
    fn name(self) -> &'static str {
        match self {
            Candidate::SyslogNg => "syslog-ng",
            Candidate::ShipperJson => "shipper",
            Candidate::ShipperProtobuf => "shipper-protobuf",
            Candidate::ShipperHttps => "shipper-https",
        }
    }
}

async fn run(options: Options) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("bench-throughput-")
        .tempdir()
        .context("creating a temp dir")?;
    let input = dir.path().join("input.log");
    let started = Instant::now();
    write_input(&input, options.lines)?;
    eprintln!(
        "wrote {} lines of {LINE_BYTES} bytes to {} in {:.1}s",
        options.lines,
        input.display(),
        started.elapsed().as_secs_f64()
    );
    let receiver = Receiver::builder()
        .store_entries(false)
        .start()
        .await
        .context("starting the receiver")?;
    let load_before = load_average();
    // The https receiver: a CA made for this run, basic credentials the shipper reads from a file.
    let ca = TestCa::new("bench-throughput ca").context("generating the test CA")?;
    let server = ca
        .server_cert(&["127.0.0.1", "localhost"])
        .context("issuing the receiver's certificate")?;
    let secure = Receiver::builder()
        .store_entries(false)
        .tls(server.cert_pem, server.key_pem)
        .basic_auth(BENCH_USER, BENCH_PASSWORD)
        .start()
        .await
        .context("starting the TLS receiver")?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).context("writing ca.pem")?;
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, BENCH_PASSWORD).context("writing the password file")?;
    let https_extra = format!(
        "[sink.tls]\nca_file = \"{}\"\n[sink.basic_auth]\nusername = \"{BENCH_USER}\"\npassword_file = \"{}\"\n",
        ca_file.display(),
        password_file.display()
    );

    let mut candidates = vec![Candidate::SyslogNg, Candidate::ShipperJson];
    if options.protobuf {
        candidates.push(Candidate::ShipperProtobuf);
    }
    if options.https {
        candidates.push(Candidate::ShipperHttps);
    }
    let mut results: Vec<(Candidate, Vec<Figures>)> =
        candidates.iter().map(|c| (*c, Vec::new())).collect();
    for round in 0..options.rounds {
        let mut order = candidates.clone();
        order.rotate_left(round % candidates.len());
        for candidate in order {
            let run_dir = dir.path().join(format!("{}-{round}", candidate.name()));
            std::fs::create_dir(&run_dir)
                .with_context(|| format!("creating {}", run_dir.display()))?;
            let (to, extra) = if candidate == Candidate::ShipperHttps {
                (&secure, https_extra.as_str())
            } else {
                (&receiver, "")
            };
            let figures = measure(candidate, &options, &input, &run_dir, to, extra).await?;
            eprintln!(
                "round {round}: {:<17} wall {:>6.2}s cpu {:>6.2}s rss {:>6.1} MiB -> {:>9.0} lines/cpu-s",
                candidate.name(),
                figures.wall_s,
                figures.cpu_s,
                figures.rss_mib,
                options.lines as f64 / figures.cpu_s
            );
            if let Some((_, runs)) = results.iter_mut().find(|(c, _)| *c == candidate) {
                runs.push(figures);
            }
        }
    }
    if receiver.rejected_bodies() > 0 || secure.rejected_bodies() > 0 {
        bail!(
            "the receivers refused {} bodies: a candidate sent invalid pushes",
            receiver.rejected_bodies() + secure.rejected_bodies()
        );
    }
    if secure.auth_failures() > 0 || secure.handshake_failures() > 0 {
        bail!(
            "the TLS receiver saw {} refused credentials and {} failed handshakes",
            secure.auth_failures(),
            secure.handshake_failures()
        );
    }
    receiver.shutdown().await;
    secure.shutdown().await;
    let load_after = load_average();
    if options.keep {
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
    }

    let summary = |candidate: Candidate| -> serde_json::Value {
        let runs = results
            .iter()
            .find(|(c, _)| *c == candidate)
            .map(|(_, runs)| runs.as_slice())
            .unwrap_or_default();
        let pick = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
        let cpu_s = pick(|f| f.cpu_s);
        serde_json::json!({
            "wall_s": round3(pick(|f| f.wall_s)),
            "cpu_s": round3(cpu_s),
            "rss_mib": round1(pick(|f| f.rss_mib)),
            "lines_per_cpu_s": (options.lines as f64 / cpu_s).round(),
        })
    };
    let shipper = summary(Candidate::ShipperJson);
    let mut peer = summary(Candidate::SyslogNg);
    peer["name"] = "syslog-ng".into();
    let ratio = shipper["lines_per_cpu_s"].as_f64().unwrap_or(0.0)
        / peer["lines_per_cpu_s"].as_f64().unwrap_or(f64::INFINITY);
    let mut doc = serde_json::json!({
        "lines": options.lines,
        "shipper": shipper,
        "peer": peer,
        "ratio_lines_per_cpu_s": round3(ratio),
        "rounds": options.rounds,
    });
    if options.protobuf {
        doc["shipper_protobuf"] = summary(Candidate::ShipperProtobuf);
    }
    if options.https {
        let https = summary(Candidate::ShipperHttps);
        let per_cpu = https["lines_per_cpu_s"].as_f64().unwrap_or(0.0);
        doc["https_ratio_lines_per_cpu_s"] =
            round3(per_cpu / peer["lines_per_cpu_s"].as_f64().unwrap_or(f64::INFINITY)).into();
        doc["https_vs_plain"] =
            round3(per_cpu / shipper["lines_per_cpu_s"].as_f64().unwrap_or(f64::INFINITY)).into();
        doc["shipper_https"] = https;
    }
    // The machine is shared: the load during the run says how far to trust the figures.
    doc["load_average_1m"] = serde_json::json!([load_before, load_after]);
    println!("{doc}");
    Ok(())
}

/// Writes `lines` lines of exactly [`LINE_BYTES`] bytes (newline included): log-like fields whose
/// values vary (a cheap generator), so compression sees realistic text, never quotes or
/// backslashes.
fn write_input(path: &Path, lines: u64) -> Result<()> {
    const LEVELS: [&str; 4] = ["info", "info", "warn", "debug"];
    const PATHS: [&str; 5] = [
        "/api/v1/orders",
        "/api/v1/users/me",
        "/healthz",
        "/api/v2/cart/items",
        "/static/app.js",
    ];
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut line = String::with_capacity(LINE_BYTES * 2);
    for seq in 0..lines {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let r = state;
        line.clear();
        let _ = write!(
            line,
            "2026-11-27T21:{:02}:{:02}.{:06}Z level={} host=web-{:02} seq={seq:09} req={:016x} \
             method=GET path={} status={} ms={} msg=request done",
            (seq / 60_000) % 60,
            (seq / 1000) % 60,
            r % 1_000_000,
            LEVELS[(r >> 20) as usize % LEVELS.len()],
            (r >> 24) % 16,
            r.rotate_left(17),
            PATHS[(r >> 28) as usize % PATHS.len()],
            [200, 200, 201, 404, 500][(r >> 32) as usize % 5],
            (r >> 36) % 900,
        );
        // Pad (or cut) to the fixed size, keeping the newline last.
        line.truncate(LINE_BYTES - 1);
        while line.len() < LINE_BYTES - 1 {
            line.push('.');
        }
        line.push('\n');
        out.write_all(line.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Runs one candidate until the receiver counted every line; returns its figures.
async fn measure(
    candidate: Candidate,
    options: &Options,
    input: &Path,
    run_dir: &Path,
    receiver: &Receiver,
    sink_extra: &str,
) -> Result<Figures> {
    let base = receiver.count();
    let target = base + options.lines;
    let log = std::fs::File::create(run_dir.join("candidate.log")).context("creating the log")?;
    let mut command = match candidate {
        Candidate::SyslogNg => {
            let conf = run_dir.join("syslog-ng.conf");
            std::fs::write(&conf, syslog_ng_config(input, receiver.addr().port()))
                .context("writing the syslog-ng config")?;
            let mut command = Command::new(&options.syslog_ng);
            command
                .arg("-F")
                .arg("--no-caps")
                .arg("-f")
                .arg(&conf)
                .arg("-R")
                .arg(run_dir.join("syslog-ng.persist"))
                .arg("-p")
                .arg(run_dir.join("syslog-ng.pid"))
                .arg("-c")
                .arg(run_dir.join("syslog-ng.ctl"));
            command
        }
        Candidate::ShipperJson | Candidate::ShipperProtobuf | Candidate::ShipperHttps => {
            let encoding = if candidate == Candidate::ShipperProtobuf {
                "protobuf"
            } else {
                "json"
            };
            let conf = run_dir.join("shipper.toml");
            let mut text = shipper_config(input, run_dir, &receiver.url(), encoding);
            text.push_str(&options.sink_extra);
            text.push_str(sink_extra);
            std::fs::write(&conf, text).context("writing the shipper config")?;
            let mut command = Command::new(&options.shipper);
            command
                .arg("--config")
                .arg(&conf)
                .envs(options.shipper_env.iter().map(|(k, v)| (k, v)));
            command
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("log handle")?)
        .stderr(log)
        .env("RUST_LOG", "warn");
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", candidate.name()))?;
    let pid = child.id();
    let outcome = wait_for_lines(receiver, target, &mut child).await;
    let wall_s = started.elapsed().as_secs_f64();
    // Read the OS figures before stopping it: shutdown work is not part of the throughput.
    let cpu = cpu_seconds(pid);
    let rss = peak_rss_mib(pid);
    stop(&mut child).await;
    if let Err(err) = outcome {
        let log = std::fs::read_to_string(run_dir.join("candidate.log")).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(err.context(format!(
            "{} delivered {} of {} lines; its log ends with:\n{tail}",
            candidate.name(),
            receiver.count() - base,
            options.lines
        )));
    }
    Ok(Figures {
        wall_s,
        cpu_s: cpu?,
        rss_mib: rss?,
    })
}

async fn wait_for_lines(receiver: &Receiver, target: u64, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while receiver.count() < target {
        if let Some(status) = child.try_wait().context("polling the child")? {
            bail!("it exited early with {status}");
        }
        if Instant::now() > deadline {
            bail!("not every line arrived within {RUN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// SIGTERM, then SIGKILL if it has not exited within 10 s.
async fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// User + system CPU seconds of a live process (all its threads), from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("parsing /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .context("parsing utime/stime")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(14)? + ticks(15)?) / hz)
}

/// Peak resident set (`VmHWM`) of a live process, in MiB.
fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

/// The fair peer configuration measured in issue 6.
fn syslog_ng_config(input: &Path, port: u16) -> String {
    format!(
        r#"@version: 3.38
options {{ stats-freq(0); }};
source s_in {{ file("{input}" flags(no-parse) log-iw-size(10000) log-fetch-limit(1000)); }};
destination d_http {{ http(url("http://127.0.0.1:{port}/loki/api/v1/push") method("POST")
  headers("Content-Type: application/json") batch-lines(1000) batch-bytes(1048576) batch-timeout(1000)
  workers(1) log-fifo-size(20000)
  body-prefix('{{"streams":[{{"stream":{{"job":"bench"}},"values":[')
  body('["${{R_UNIXTIME}}${{R_USEC}}000","${{MESSAGE}}"]') delimiter(",\n") body-suffix("\n]}}]}}")); }};
log {{ source(s_in); destination(d_http); flags(flow-control); }};
"#,
        input = input.display()
    )
}

fn shipper_config(input: &Path, run_dir: &Path, url: &str, encoding: &str) -> String {
    format!(
        r#"data_dir = "{data}"
shutdown_timeout = "5s"

[server]
main_addr = "127.0.0.1:0"
debug_addr = "127.0.0.1:0"

[[sources]]
type = "file"
include = ["{input}"]
read_from = "beginning"
labels = {{ job = "bench" }}

[sink]
type = "loki"
url = "{url}"
encoding = "{encoding}"
"#,
        data = run_dir.join("data").display(),
        input = input.display(),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
