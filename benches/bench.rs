//! `make bench` (issue 9): each measurement against its yardstick, A and B alternating in
//! every round so that machine noise falls on both, medians reported, everything written to
//! target/bench.json.
//!
//! - **proxy**: a blob (1 GiB; `BENCH_BLOB_MIB`) pushed as clients push (POST, one streamed
//!   PATCH, PUT with the digest) and downloaded (GET, digest checked) through the nginx proxy
//!   (push port with the bundle's client certificate, pull port anonymous) and straight to the
//!   registry on 127.0.0.1, with the real parts tests/proxy_loopback.rs uses
//!   (tests/common/loopback.rs). The client is curl (OpenSSL), not ureq in this process: a
//!   first try with ureq, hashing in-process, read 187 MB/s straight from the registry where
//!   curl read 506; this file's sha2 (software, opt-level "s") hashes only ~220 MB/s, OpenSSL's
//!   ~1 GB/s, so in-process hashing would have capped both ways. The upload stream is
//!   generated on the fly (a 1 MiB pseudo-random block, repeated), digested once beforehand
//!   and piped into curl's stdin; the download is piped from curl into `openssl dgst` and
//!   checked, as clients verify what they pull. Each request is its own curl (a new
//!   connection; the handshakes are noise next to the blob).
//! - **pki**: `regimage firstboot --no-system` (ECDSA P-256, the default, and RSA-4096)
//!   against the guide's openssl procedure, bench/guide-pki.sh (RSA-4096).
//! - **user-data**: `regimage build user-data` with the binary embedded and with
//!   `--binary-url/--binary-sha256`: wall time and size.
//! - **e2e**: a summary of the last VM test's target/e2e-timings.json, when there is one.
//!
//! Needs root (nginx, files owned by root), nginx, docker-registry, curl, openssl, skopeo.
//! Every loop is bounded: `BENCH_ROUNDS` (5), `BENCH_PKI_ROUNDS` (5), `BENCH_BUILD_ROUNDS`
//! (3), and `BENCH_MAX_SECONDS` (3600) for the whole run, after which no new round starts.
//! `BENCH_ONLY` (say `proxy`) runs a comma-separated subset of proxy, pki, user-data, e2e.
//! `BENCH_PROXY_BASELINE=<regimage binary>` adds a third way to the proxy rounds: nginx
//! running the config that binary renders (say main's build: the old proxy config against
//! the new in the same rounds).
//! Traffic goes to 127.0.0.1 only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use common::blob_http::{blob_digest, download, upload, Way};
use common::{run_ok, s};

const MIB: u64 = 1024 * 1024;
/// One PATCH stays under 2g, the default `client_max_body_size` of older builds (the
/// baseline proxy is rendered by one).
const MAX_BLOB_MIB: u64 = 2000;
const REPO: &str = "bench/blob";

fn env_u64(name: &str, default: u64, min: u64, max: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let n: u64 = v
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{name}={v:?}: not a whole number ({e})"));
            assert!(
                (min..=max).contains(&n),
                "{name}={n}: expected {min} to {max}"
            );
            n
        }
        Err(_) => default,
    }
}

fn log(msg: &str) {
    let now = time::OffsetDateTime::now_utc();
    eprintln!(
        "{:02}:{:02}:{:02} [bench] {msg}",
        now.hour(),
        now.minute(),
        now.second()
    );
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The run's time budget: a new round starts only while it lasts.
struct Budget {
    started: Instant,
    limit: Duration,
    exhausted: bool,
}

impl Budget {
    /// Whether round `round` (0-based) may start; the first always does.
    fn allows(&mut self, what: &str, round: u64) -> bool {
        if round > 0 && self.started.elapsed() > self.limit {
            if !self.exhausted {
                log(&format!(
                    "BENCH_MAX_SECONDS ({}) spent: {what} stops after {round} rounds",
                    self.limit.as_secs()
                ));
            }
            self.exhausted = true;
            return false;
        }
        true
    }
}

/// Throughputs (MB/s, 10^6 bytes) of each round, per way (direct, proxy and, with
/// `BENCH_PROXY_BASELINE`, baseline), and their ratios.
#[derive(Default)]
struct Series {
    direct: Vec<f64>,
    proxy: Vec<f64>,
    baseline: Vec<f64>,
}

impl Series {
    fn push(&mut self, way: &str, mb_s: f64) {
        match way {
            "direct" => self.direct.push(mb_s),
            "proxy" => self.proxy.push(mb_s),
            _ => self.baseline.push(mb_s),
        }
    }

    fn report(&self, label: &str) -> Value {
        let mut out = serde_json::Map::new();
        let d = median(&self.direct);
        out.insert("direct_mb_s".into(), json!(rounded(&self.direct)));
        out.insert("direct_median_mb_s".into(), json!(round3(d)));
        // The earlier keys (proxy vs direct) first, then the baseline's.
        for (name, way, base, base_name) in [
            ("proxy", &self.proxy, &self.direct, "direct"),
            ("baseline", &self.baseline, &self.direct, "direct"),
            ("proxy", &self.proxy, &self.baseline, "baseline"),
        ] {
            if way.is_empty() || base.is_empty() {
                continue;
            }
            let (m, mb) = (median(way), median(base));
            let paired: Vec<f64> = way.iter().zip(base).map(|(p, d)| p / d).collect();
            let ratio = m / mb;
            println!(
                "  {label:<5} {base_name:<8} {mb:7.1} MB/s  {name:<8} {m:7.1} MB/s  \
                 {name}/{base_name} {ratio:.3} (median of round ratios {:.3}; rounds {:?})",
                median(&paired),
                rounded(&paired)
            );
            if base_name == "direct" {
                out.insert(format!("{name}_mb_s"), json!(rounded(way)));
                out.insert(format!("{name}_median_mb_s"), json!(round3(m)));
            }
            let key = if base_name == "direct" {
                format!("{name}_direct")
            } else {
                format!("{name}_{base_name}")
            };
            out.insert(format!("ratio_{key}"), json!(round3(ratio)));
            out.insert(
                if key == "proxy_direct" {
                    "round_ratios".to_string()
                } else {
                    format!("round_ratios_{key}")
                },
                json!(rounded(&paired)),
            );
            out.insert(
                if key == "proxy_direct" {
                    "median_round_ratio".to_string()
                } else {
                    format!("median_round_ratio_{key}")
                },
                json!(round3(median(&paired))),
            );
        }
        Value::Object(out)
    }
}

fn rounded(values: &[f64]) -> Vec<f64> {
    values.iter().map(|x| round3(*x)).collect()
}

/// `BENCH_PROXY_BASELINE`: another regimage binary (say main's build) renders its
/// nginx.conf for the same site on ports of its own; a second nginx runs it with the same
/// certificates and registry, so the old and the new proxy config run in the same rounds.
fn baseline_way(
    lb: &common::loopback::Loopback,
    ca: &[String],
    cert: &[String],
) -> Option<(Way, common::vm::Background)> {
    let bin = std::env::var_os("BENCH_PROXY_BASELINE")?;
    let (pull, push) = (common::free_port(), common::free_port());
    let dir = lb.work.join("baseline");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("creating the baseline dir");
    let cfg = dir.join("regimage.yaml");
    std::fs::write(
        &cfg,
        format!(
            "hostname: localhost\nextra-names: [127.0.0.1]\nports:\n  pull: {pull}\n  push: {push}\n  registry: {}\n",
            lb.registry_port
        ),
    )
    .expect("writing the baseline config");
    run_ok(
        Command::new(&bin)
            .args(["render", "--root"])
            .arg(&root)
            .arg("-c")
            .arg(&cfg),
    );
    let conf = std::fs::read_to_string(root.join("etc/registry/nginx.conf"))
        .expect("reading the baseline nginx.conf");
    log(&format!(
        "proxy: baseline nginx.conf rendered by {} on ports {pull} and {push}",
        s(Path::new(&bin))
    ));
    let nginx =
        common::loopback::start_nginx(&conf, &lb.root, &lb.work, "baseline-proxy", &[pull, push]);
    let way = Way {
        name: "baseline",
        push_base: format!("https://127.0.0.1:{push}"),
        push_tls: cert.to_vec(),
        pull_base: format!("https://127.0.0.1:{pull}"),
        pull_tls: ca.to_vec(),
    };
    Some((way, nginx))
}

fn bench_proxy(budget: &mut Budget) -> Value {
    let mib = env_u64("BENCH_BLOB_MIB", 1024, 1, MAX_BLOB_MIB);
    let rounds = env_u64("BENCH_ROUNDS", 5, 1, 50);
    let len = mib * MIB;
    log("proxy: starting the registry and nginx as tests/proxy_loopback.rs does");
    let lb = common::loopback::start("");
    let c = &lb.client;
    let direct = Way::plain("direct", &format!("http://127.0.0.1:{}", lb.registry_port));
    // The certificate names 127.0.0.1 (extra-names), so no name resolution is involved.
    let ca = vec!["--cacert".to_string(), s(&c.server_ca)];
    let mut client_cert = ca.clone();
    client_cert.extend(["--cert".to_string(), s(&c.cert)]);
    client_cert.extend(["--key".to_string(), s(&c.key)]);
    let proxy = Way {
        name: "proxy",
        push_base: format!("https://127.0.0.1:{}", c.push),
        push_tls: client_cert.clone(),
        pull_base: format!("https://127.0.0.1:{}", c.pull),
        pull_tls: ca.clone(),
    };
    let baseline = baseline_way(&lb, &ca, &client_cert);
    let mut ways = vec![&direct, &proxy];
    if let Some((way, _)) = &baseline {
        ways.push(way);
    }
    let work = lb.work.join("bench");
    std::fs::create_dir(&work).expect("creating the bench dir");
    let t = Instant::now();
    let digest = blob_digest(len);
    log(&format!(
        "proxy: {mib} MiB blob {digest} (digested in {:.1} s)",
        t.elapsed().as_secs_f64()
    ));

    let (mut up, mut down) = (Series::default(), Series::default());
    let mb = len as f64 / 1e6;
    for round in 0..rounds {
        if !budget.allows("proxy", round) {
            break;
        }
        // The order rotates: each way goes first in turn (A B, then B A with two).
        let mut order = ways.clone();
        order.rotate_left(round as usize % ways.len());
        for way in &order {
            let secs = upload(way, REPO, len, &digest, &work);
            log(&format!(
                "proxy: round {} up   {:<8} {:7.1} MB/s ({secs:.2} s)",
                round + 1,
                way.name,
                mb / secs
            ));
            up.push(way.name, mb / secs);
        }
        for way in &order {
            let secs = download(way, REPO, &digest);
            log(&format!(
                "proxy: round {} down {:<8} {:7.1} MB/s ({secs:.2} s)",
                round + 1,
                way.name,
                mb / secs
            ));
            down.push(way.name, mb / secs);
        }
    }
    println!(
        "proxy vs direct, {mib} MiB blob, {} rounds, client curl (MB = 10^6 bytes):",
        up.direct.len()
    );
    let up_report = up.report("up");
    let down_report = down.report("down");
    json!({
        "blob_mib": mib,
        "rounds": up.direct.len(),
        "client": "curl (OpenSSL); upload body piped from the benchmark, download piped into openssl dgst",
        "baseline": std::env::var_os("BENCH_PROXY_BASELINE").map(|b| s(Path::new(&b))),
        "up": up_report,
        "down": down_report,
    })
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---- first-boot PKI -------------------------------------------------------------------------

fn regimage_binary() -> PathBuf {
    std::env::var_os("REGIMAGE_BENCH_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_regimage")))
}

/// Runs `cmd` to success and returns its wall time in seconds.
fn timed(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    run_ok(cmd);
    t.elapsed().as_secs_f64()
}

fn bench_pki(budget: &mut Budget, work: &Path) -> Value {
    let rounds = env_u64("BENCH_PKI_ROUNDS", 5, 1, 50);
    let script = common::vm::repo_root().join("bench/guide-pki.sh");
    let mut configs = Vec::new();
    for alg in ["ecdsa-p256", "rsa-4096"] {
        let cfg = work.join(format!("pki-{alg}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "hostname: localhost\nextra-names: [127.0.0.1]\npki:\n  key-algorithm: {alg}\n"
            ),
        )
        .expect("writing a PKI config");
        configs.push(cfg);
    }
    let names = ["regimage_ecdsa_p256", "regimage_rsa_4096", "guide_rsa_4096"];
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        if !budget.allows("pki", round) {
            break;
        }
        // Rotate the order: each variant runs first, second and third in turn.
        for k in 0..3 {
            let i = (k + round as usize) % 3;
            let dir = work.join(format!("pki-{round}-{i}"));
            let secs = if i < 2 {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
                timed(
                    Command::new(regimage_binary())
                        .args(["firstboot", "--no-system", "--root"])
                        .arg(&dir)
                        .arg("-c")
                        .arg(&configs[i]),
                )
            } else {
                timed(Command::new(&script).arg(&dir))
            };
            log(&format!(
                "pki: round {} {:<20} {secs:6.2} s",
                round + 1,
                names[i]
            ));
            times[i].push(secs);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let med: Vec<f64> = times.iter().map(|t| median(t)).collect();
    println!(
        "first-boot PKI, {} rounds (median wall time; the guide is 4 RSA-4096 keys):",
        times[0].len()
    );
    for (name, m) in names.iter().zip(&med) {
        println!("  {name:<20} {m:6.2} s");
    }
    println!(
        "  guide / regimage ECDSA {:.1}x   guide / regimage RSA-4096 {:.2}x",
        med[2] / med[0],
        med[2] / med[1]
    );
    let mut out = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        out.insert(
            name.to_string(),
            json!({
                "seconds": times[i].iter().map(|x| round3(*x)).collect::<Vec<_>>(),
                "median_seconds": round3(med[i]),
            }),
        );
    }
    out.insert("rounds".into(), json!(times[0].len()));
    out.insert(
        "ratio_guide_over_ecdsa".into(),
        json!(round3(med[2] / med[0])),
    );
    out.insert(
        "ratio_guide_over_rsa".into(),
        json!(round3(med[2] / med[1])),
    );
    Value::Object(out)
}

// ---- build user-data ------------------------------------------------------------------------

fn bench_user_data(budget: &mut Budget, work: &Path) -> Value {
    let rounds = env_u64("BENCH_BUILD_ROUNDS", 3, 1, 50);
    let bin = regimage_binary();
    let bin_bytes = read_file(&bin);
    let sha = hex::encode(Sha256::digest(&bin_bytes));
    // Never fetched: build only writes the URL into the user-data.
    let url = "http://127.0.0.1/regimage";
    let names = ["embedded", "binary_url"];
    let mut times: [Vec<f64>; 2] = Default::default();
    let mut sizes = [0u64; 2];
    for round in 0..rounds {
        if !budget.allows("user-data", round) {
            break;
        }
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let out = work.join(format!("user-data-{i}"));
            let mut cmd = Command::new(&bin);
            cmd.args(["build", "user-data", "-o"]).arg(&out);
            if i == 1 {
                cmd.args(["--binary-url", url, "--binary-sha256", &sha]);
            }
            let secs = timed(&mut cmd);
            sizes[i] = std::fs::metadata(&out)
                .unwrap_or_else(|e| panic!("reading {}: {e}", out.display()))
                .len();
            log(&format!(
                "user-data: round {} {:<10} {secs:5.2} s {} bytes",
                round + 1,
                names[i],
                sizes[i]
            ));
            times[i].push(secs);
        }
    }
    println!(
        "build user-data, default config, {} rounds (binary {} bytes):",
        times[0].len(),
        bin_bytes.len()
    );
    let mut out = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let m = median(&times[i]);
        println!(
            "  {name:<10} {m:5.2} s  {} bytes ({:.1} KiB)",
            sizes[i],
            sizes[i] as f64 / 1024.0
        );
        out.insert(
            name.to_string(),
            json!({
                "seconds": times[i].iter().map(|x| round3(*x)).collect::<Vec<_>>(),
                "median_seconds": round3(m),
                "bytes": sizes[i],
            }),
        );
    }
    out.insert("binary_bytes".into(), json!(bin_bytes.len()));
    out.insert("rounds".into(), json!(times[0].len()));
    Value::Object(out)
}

// ---- the last VM test -----------------------------------------------------------------------

/// The headline figures of each test in target/e2e-timings.json: its total, the bake, boot
/// to ready, and the sum and largest of first boot's own steps.
fn e2e_summary() -> Value {
    let path = common::vm::Timings::path();
    let Ok(bytes) = std::fs::read(&path) else {
        println!("no {} (run `make e2e` for the VM timings)", path.display());
        return Value::Null;
    };
    let all: serde_json::Map<String, Value> = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            println!("{}: not JSON ({e})", path.display());
            return Value::Null;
        }
    };
    let age = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| m.elapsed().ok())
        .map(|d| d.as_secs() / 60);
    println!(
        "last VM test ({}, written {} min ago):",
        path.display(),
        age.map_or("?".to_string(), |a| a.to_string())
    );
    let mut out = serde_json::Map::new();
    for (test, stages) in &all {
        let Some(stages) = stages.as_object() else {
            continue;
        };
        let mut summary = serde_json::Map::new();
        let mut line = Vec::new();
        for key in stages.keys() {
            let headline = key == "total_seconds"
                || key == "bake_seconds"
                || key.ends_with("boot_to_ready_seconds");
            if let (true, Some(v)) = (headline, stages[key].as_f64()) {
                line.push(format!("{} {v:.1} s", key.trim_end_matches("_seconds")));
                summary.insert(key.clone(), json!(v));
            }
        }
        // First boot's steps, per prefix ("" for the user-data VM, "vm1_" and so on).
        let mut prefixes: Vec<&str> = Vec::new();
        for key in stages.keys() {
            if let Some(i) = key.find("firstboot_step_") {
                if key.ends_with("_seconds") && !prefixes.contains(&&key[..i]) {
                    prefixes.push(&key[..i]);
                }
            }
        }
        for prefix in prefixes {
            let start = format!("{prefix}firstboot_step_");
            let mut steps: Vec<(&str, f64)> = stages
                .iter()
                .filter_map(|(k, v)| {
                    let name = k.strip_prefix(&start)?.strip_suffix("_seconds")?;
                    Some((name, v.as_f64()?))
                })
                .collect();
            steps.sort_by(|a, b| b.1.total_cmp(&a.1));
            let total: f64 = steps.iter().map(|(_, v)| v).sum();
            let top: Vec<String> = steps
                .iter()
                .take(3)
                .map(|(n, v)| format!("{n} {v:.1}"))
                .collect();
            line.push(format!(
                "{prefix}firstboot steps {total:.1} s ({})",
                top.join(", ")
            ));
            summary.insert(
                format!("{prefix}firstboot_steps_total_seconds"),
                json!(total),
            );
        }
        println!("  {test}: {}", line.join("; "));
        out.insert(test.clone(), Value::Object(summary));
    }
    Value::Object(out)
}

// ---- the run --------------------------------------------------------------------------------

fn sh_line(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.trim().to_string()
        })
        .unwrap_or_default()
}

fn machine() -> Value {
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": sh_line("sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1"),
        "kernel": sh_line("uname -r"),
        "loadavg_start": sh_line("cat /proc/loadavg"),
        "nginx": sh_line("nginx -v"),
        "registry": sh_line("docker-registry --version"),
        "openssl": sh_line("openssl version"),
    })
}

fn main() {
    // `cargo bench` passes --bench. `cargo test --all-targets` (`make unit`) also builds and
    // runs this file, without it: then it does nothing.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/bench.rs: nothing to do without --bench (`make bench` runs it)");
        return;
    }
    let started = Instant::now();
    let mut budget = Budget {
        started,
        limit: Duration::from_secs(env_u64("BENCH_MAX_SECONDS", 3600, 60, 86_400)),
        exhausted: false,
    };
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formatting the date");
    let mut report = serde_json::Map::new();
    report.insert("date".into(), json!(stamp));
    report.insert(
        "git".into(),
        json!(sh_line(&format!(
            "git -C '{}' rev-parse --short HEAD",
            s(&common::vm::repo_root())
        ))),
    );
    report.insert("regimage".into(), json!(s(&regimage_binary())));
    report.insert("machine".into(), machine());
    log(&format!(
        "regimage {}; machine load {}",
        s(&regimage_binary()),
        sh_line("cat /proc/loadavg")
    ));

    let dir = common::test_dir("regimage-bench-");
    // BENCH_ONLY: a comma-separated subset of proxy, pki, user-data, e2e (default: all).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let parts: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    for p in &parts {
        assert!(
            ["proxy", "pki", "user-data", "e2e"].contains(p),
            "BENCH_ONLY={only:?}: {p:?} is not one of proxy, pki, user-data, e2e"
        );
    }
    let runs = |part: &str| parts.is_empty() || parts.contains(&part);
    if runs("proxy") {
        report.insert("proxy".into(), bench_proxy(&mut budget));
    }
    if runs("pki") {
        report.insert("pki".into(), bench_pki(&mut budget, dir.path()));
    }
    if runs("user-data") {
        report.insert("user_data".into(), bench_user_data(&mut budget, dir.path()));
    }
    if runs("e2e") {
        report.insert("e2e".into(), e2e_summary());
    }
    report.insert("loadavg_end".into(), json!(sh_line("cat /proc/loadavg")));
    report.insert(
        "seconds".into(),
        json!(round3(started.elapsed().as_secs_f64())),
    );
    report.insert("budget_exhausted".into(), json!(budget.exhausted));

    let out = common::vm::Timings::path().with_file_name("bench.json");
    let text = serde_json::to_vec_pretty(&Value::Object(report)).expect("encoding the report");
    std::fs::write(&out, text).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    println!(
        "wrote {} ({:.0} s in all)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
}
