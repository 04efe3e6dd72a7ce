//! A blob pushed as clients push a layer (POST, one streamed PATCH, PUT with the digest) and
//! pulled back (GET, digest checked), timed, with curl: the benchmark's transfers
//! (benches/bench.rs, where the choice of curl over an in-process client is explained) and
//! the S3 storage test's throughput figures (tests/s3_registry.rs). The upload body is
//! generated on the fly ([`Blob`]) and piped into curl's stdin; the download is piped from
//! curl into `openssl dgst`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::blob::Blob;

const MIB: u64 = 1024 * 1024;
/// One request (a whole 1 GiB PATCH or GET) may take this long before the run fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(900);

/// The digest (`sha256:HEX`) of [`Blob::new`]`(len)`, computed in this process (once, before
/// the timed transfers).
pub fn blob_digest(len: u64) -> String {
    let mut blob = Blob::new(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = blob.read(&mut buf).expect("reading the generated blob");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// One way to the registry: where to push and pull, and curl's TLS arguments for each.
pub struct Way {
    pub name: &'static str,
    pub push_base: String,
    pub push_tls: Vec<String>,
    pub pull_base: String,
    pub pull_tls: Vec<String>,
}

impl Way {
    /// Straight to a registry's plain-HTTP `base` (`http://127.0.0.1:PORT`), both ways.
    pub fn plain(name: &'static str, base: &str) -> Way {
        Way {
            name,
            push_base: base.to_string(),
            push_tls: Vec::new(),
            pull_base: base.to_string(),
            pull_tls: Vec::new(),
        }
    }
}

/// curl for one request: no proxy from the environment, bounded in time, no
/// `Expect: 100-continue` (Go clients do not send it; curl would wait for the answer).
fn curl(tls: &[String]) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time"])
        .arg(REQUEST_TIMEOUT.as_secs().to_string())
        .args(["-H", "Expect:"])
        .args(tls);
    cmd
}

/// The status code curl printed with `-w %{http_code}` and the headers it dumped to `headers`.
fn reply(out: &std::process::Output, headers: &Path, what: &str) -> (u16, String) {
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let text = std::fs::read_to_string(headers).unwrap_or_default();
    assert!(
        code != 0,
        "{what}: no HTTP answer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, text)
}

fn header(headers: &str, name: &str) -> Option<String> {
    // The last block: curl dumps every response, a 100 Continue included.
    headers.lines().rev().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Absolute URL for a Location that may be relative (REGISTRY_HTTP_RELATIVEURLS=true).
fn resolve(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        assert!(
            loc.starts_with(base),
            "the registry sent the upload elsewhere: {loc} (expected under {base})"
        );
        loc.to_string()
    } else {
        format!("{base}{loc}")
    }
}

/// One request without a body; returns the status and the response headers.
fn request(way: &Way, tls: &[String], method: &str, url: &str, work: &Path) -> (u16, String) {
    let headers = work.join("headers");
    let what = format!("{}: {method} {url}", way.name);
    let out = super::output(
        curl(tls)
            .args(["-X", method, "-o", "/dev/null", "-w", "%{http_code}", "-D"])
            .arg(&headers)
            .arg(url),
    );
    reply(&out, &headers, &what)
}

/// POST, one streamed PATCH, PUT with the digest, as clients push a layer; returns the
/// seconds it took. The PATCH body comes from this process through curl's stdin.
pub fn upload(way: &Way, repo: &str, len: u64, digest: &str, work: &Path) -> f64 {
    let t = Instant::now();
    let (code, headers) = request(
        way,
        &way.push_tls,
        "POST",
        &format!("{}/v2/{repo}/blobs/uploads/", way.push_base),
        work,
    );
    assert_eq!(code, 202, "{}: starting an upload:\n{headers}", way.name);
    let loc = header(&headers, "location")
        .unwrap_or_else(|| panic!("{}: no Location:\n{headers}", way.name));
    let url = resolve(&way.push_base, &loc);

    let what = format!("{}: PATCH of {len} bytes", way.name);
    let dump = work.join("patch-headers");
    let mut child = curl(&way.push_tls)
        .args(["-X", "PATCH", "-T", "-"])
        // A known length, as clients send a layer (curl would otherwise go chunked).
        .args(["-H", "Transfer-Encoding:"])
        .args(["-H", &format!("Content-Length: {len}")])
        .args(["-H", "Content-Type: application/octet-stream"])
        .args(["-o", "/dev/null", "-w", "%{http_code}", "-D"])
        .arg(&dump)
        .arg(&url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: starting curl: {e}"));
    let mut stdin = child.stdin.take().expect("curl's stdin");
    // 1 MiB writes (io::copy would write 8 KiB at a time).
    let copied = Blob::new(len).write_to(&mut stdin);
    drop(stdin);
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{what}: waiting for curl: {e}"));
    let (code, headers) = reply(&out, &dump, &what);
    assert_eq!(
        copied.ok(),
        Some(len),
        "{what}: curl did not take the whole body (HTTP {code})\n{headers}"
    );
    assert_eq!(code, 202, "{what}:\n{headers}");
    let loc =
        header(&headers, "location").unwrap_or_else(|| panic!("{what}: no Location:\n{headers}"));
    let url = resolve(&way.push_base, &loc);

    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}digest={digest}");
    let (code, headers) = request(way, &way.push_tls, "PUT", &url, work);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(code, 201, "{}: PUT with the digest:\n{headers}", way.name);
    assert_eq!(
        header(&headers, "docker-content-digest").as_deref(),
        Some(digest),
        "{}: the registry stored another digest",
        way.name
    );
    secs
}

/// GET of the blob, piped into `openssl dgst -sha256` as it arrives (a client verifies what
/// it pulls; OpenSSL's SHA-256 keeps up, this file's optimized-for-size sha2 would not);
/// returns the seconds it took.
pub fn download(way: &Way, repo: &str, digest: &str) -> f64 {
    let what = format!("{}: GET of the blob", way.name);
    let t = Instant::now();
    let mut get = curl(&way.pull_tls)
        .args(["--fail", "-o", "-"])
        .arg(format!("{}/v2/{repo}/blobs/{digest}", way.pull_base))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: starting curl: {e}"));
    let body = get.stdout.take().expect("curl's stdout");
    let sum = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .stdin(body)
        .output()
        .unwrap_or_else(|e| panic!("{what}: running openssl dgst: {e}"));
    let out = get
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{what}: waiting for curl: {e}"));
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{what}: curl failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&sum.stdout);
    let got = format!("sha256:{}", text.split_whitespace().next().unwrap_or(""));
    assert_eq!(
        got, digest,
        "{what}: the bytes that came back have another digest"
    );
    secs
}
