//! The registry's client side, shared by the loopback proxy test and the VM tests: a client
//! bundle installed as its README says (per user, under a fresh HOME), real skopeo and curl
//! as that user, a push through the push port and a pull through the pull port, and the
//! refusals both tests prove.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use super::blob::{self, Blob};
use super::vm::{progress, secs};
use super::{output, run_ok, s};

/// How the client reaches the registry: the name in the bundle and the ports behind it.
#[derive(Clone, Debug)]
pub struct Names {
    /// The registry's primary name (status.json's `primary_name`).
    pub host: String,
    pub pull: u16,
    pub push: u16,
    /// An /etc/hosts the client's commands see instead of the host's (a private mount
    /// namespace), so `host` resolves as a user's DNS would make it; `None` for localhost.
    pub hosts_file: Option<PathBuf>,
}

impl Names {
    /// The registry on this machine's `localhost`.
    pub fn localhost(pull: u16, push: u16) -> Names {
        Names {
            host: "localhost".into(),
            pull,
            push,
            hosts_file: None,
        }
    }

    /// `HOST[:PORT]` as the bundle and every client name the registry on `port`.
    pub fn registry(&self, port: u16) -> String {
        regimage::bundle::registry_host(&self.host, port)
    }
}

/// One client with its bundle installed.
pub struct Client {
    /// The client's own scratch directory.
    pub work: PathBuf,
    /// The bundle's client name (the CN of its certificate).
    pub name: String,
    pub names: Names,
    pub pull: u16,
    pub push: u16,
    /// HOME with ~/.config/containers/certs.d from the bundle.
    pub home: PathBuf,
    /// Colon-free copies of the bundle's files: curl reads a ':' in --cert as a passphrase
    /// separator, and certs.d names its directories host:port.
    pub server_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One curl request's outcome.
pub struct Reply {
    /// 0 when there was no HTTP answer.
    pub code: u16,
    pub headers: String,
    /// The body, or curl's own error when there was no HTTP answer.
    pub body: String,
}

/// Unpacks `tarball`, the bundle of client `name`, under `work` (which must exist) and
/// installs it as its README says for a registry on localhost's `pull` and `push` ports.
pub fn install_bundle(tarball: &Path, name: &str, work: &Path, pull: u16, push: u16) -> Client {
    install_bundle_for(tarball, name, work, Names::localhost(pull, push))
}

/// [`install_bundle`] for a registry reached by `names`.
pub fn install_bundle_for(tarball: &Path, name: &str, work: &Path, names: Names) -> Client {
    let (pull, push) = (names.pull, names.push);
    let unpacked = work.join("bundle");
    std::fs::create_dir(&unpacked).expect("creating the bundle dir");
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(tarball)
            .arg("-C")
            .arg(&unpacked),
    );
    let readme = std::fs::read_to_string(unpacked.join(format!("{name}/README.md")))
        .expect("reading the bundle README");
    assert!(
        readme.contains("mkdir -p ~/.config/containers/certs.d"),
        "the bundle README lacks the per-user install:\n{readme}"
    );
    let home = work.join("home");
    let certs_d = home.join(".config/containers/certs.d");
    std::fs::create_dir_all(&certs_d).expect("creating certs.d");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(unpacked.join(format!("{name}/containers/certs.d/.")))
            .arg(&certs_d),
    );
    let push_dir = certs_d.join(names.registry(push));
    for f in ["ca.crt", "client.cert", "client.key"] {
        assert!(
            push_dir.join(f).is_file(),
            "the bundle lacks {f} for {}",
            names.registry(push)
        );
    }
    let pull_ca = certs_d.join(names.registry(pull)).join("ca.crt");
    assert!(pull_ca.is_file(), "the bundle lacks the pull port's CA");
    let pem = work.join("pem");
    std::fs::create_dir(&pem).expect("creating the pem dir");
    for f in ["client.cert", "client.key", "ca.crt"] {
        std::fs::copy(push_dir.join(f), pem.join(f)).expect("copying a bundle file");
    }
    Client {
        work: work.to_path_buf(),
        name: name.to_string(),
        names,
        pull,
        push,
        home,
        server_ca: pem.join("ca.crt"),
        cert: pem.join("client.cert"),
        key: pem.join("client.key"),
    }
}

/// The Location of the last response in `headers` (curl -D), as a path.
pub fn location(headers: &str) -> String {
    let line = headers
        .lines()
        .rev()
        .find(|l| l.to_lowercase().starts_with("location:"))
        .unwrap_or_else(|| panic!("no Location header:\n{headers}"));
    line.split_once(':')
        .map_or("", |(_, v)| v.trim())
        .to_string()
}

/// The body is a registry error (JSON) whose first code is `code`.
pub fn assert_registry_error(body: &str, code: &str) {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}"));
    assert_eq!(v["errors"][0]["code"], code, "body: {body}");
}

impl Client {
    /// skopeo as a user whose HOME is `home`.
    pub fn skopeo(&self, home: &Path) -> Command {
        let mut cmd = self.command("skopeo");
        // Only certs.d under HOME counts: no system-wide trust or policy from this host.
        cmd.env("HOME", home).arg("--insecure-policy");
        cmd
    }

    /// curl's arguments presenting this client's certificate.
    pub fn tls(&self) -> [String; 4] {
        ["--cert".into(), s(&self.cert), "--key".into(), s(&self.key)]
    }

    /// [`Client::curl`] presenting this client's certificate.
    pub fn curl_tls(&self, args: &[&str], url: &str) -> Reply {
        let tls = self.tls();
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(tls.iter().map(String::as_str))
            .collect();
        self.curl(&all, url)
    }

    /// Starts a blob upload to `repo` on the push port (POST); returns its Location.
    pub fn start_upload(&self, repo: &str) -> String {
        let reply = self.curl_tls(
            &["-X", "POST"],
            &self.push_url(&format!("/v2/{repo}/blobs/uploads/")),
        );
        assert_eq!(reply.code, 202, "starting an upload: {}", reply.body);
        location(&reply.headers)
    }

    /// Sends `blob` as clients push a layer: one streamed PATCH with its length to
    /// `upload` (a Location), the bytes made on the fly and digested on the way out;
    /// `extra` goes to curl (e.g. `--limit-rate`). Returns curl's output (the headers, then
    /// the status code) and the digest.
    pub fn patch_streamed(
        &self,
        upload: &str,
        blob: &mut Blob,
        extra: &[&str],
    ) -> (Output, String) {
        let len = blob.size();
        let mut curl = self
            .command("curl")
            .args(["-sS", "--noproxy", "*", "--max-time", "1800", "--cacert"])
            .arg(&self.server_ca)
            .args(self.tls())
            .args([
                "-X",
                "PATCH",
                "-T",
                "-",
                "-H",
                "Expect:",
                "-H",
                "Transfer-Encoding:",
            ])
            .args(["-H", &format!("Content-Length: {len}")])
            .args(["-H", "Content-Type: application/octet-stream"])
            .args(["-o", "/dev/null", "-D", "-", "-w", "%{http_code}"])
            .args(extra)
            .arg(self.push_url(upload))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting curl");
        let stdin = curl.stdin.take().expect("curl's stdin");
        let (written, digest) = blob::write_digested(blob, stdin);
        let out = curl.wait_with_output().expect("waiting for curl");
        assert_eq!(
            written.ok(),
            Some(len),
            "curl did not take the whole blob: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out, digest)
    }

    /// Ends an upload after [`Client::patch_streamed`] returned `patch` (which must be a
    /// 202): PUT with the digest, 201.
    pub fn finish_upload(&self, patch: &Output, digest: &str) {
        let stdout = String::from_utf8_lossy(&patch.stdout);
        assert!(
            stdout.ends_with("202"),
            "the PATCH: {stdout}\n{}",
            String::from_utf8_lossy(&patch.stderr)
        );
        let upload = location(&stdout);
        let sep = if upload.contains('?') { '&' } else { '?' };
        let reply = self.curl_tls(
            &["-X", "PUT", "--max-time", "600"],
            &self.push_url(&format!("{upload}{sep}digest={digest}")),
        );
        assert_eq!(reply.code, 201, "finishing the upload: {}", reply.body);
    }

    /// The registry holds blob `digest` of `repo` with `len` bytes (HEAD on the push port:
    /// its Content-Length and Docker-Content-Digest).
    pub fn assert_blob(&self, repo: &str, digest: &str, len: u64) {
        let reply = self.curl_tls(
            &["-I"],
            &self.push_url(&format!("/v2/{repo}/blobs/{digest}")),
        );
        assert_eq!(reply.code, 200, "{}", reply.headers);
        let headers = reply.headers.to_lowercase();
        assert!(
            headers.contains(&format!("content-length: {len}\r")),
            "{}",
            reply.headers
        );
        assert!(
            headers.contains(&format!("docker-content-digest: {digest}\r")),
            "{}",
            reply.headers
        );
    }

    /// Pushes `blob` to `repo` (POST, streamed PATCH, PUT; `extra` goes to the PATCH's curl)
    /// and checks the registry holds it; returns its digest.
    pub fn push_blob(&self, repo: &str, blob: &mut Blob, extra: &[&str]) -> String {
        let upload = self.start_upload(repo);
        let len = blob.size();
        let (patch, digest) = self.patch_streamed(&upload, blob, extra);
        self.finish_upload(&patch, &digest);
        self.assert_blob(repo, &digest, len);
        digest
    }

    /// Downloads blob `digest` of `repo` anonymously through the pull port, digesting it on
    /// the way (never stored); `extra` goes to curl. Returns the HTTP status and the digest of
    /// the bytes received.
    pub fn pull_blob_digest(&self, repo: &str, digest: &str, extra: &[&str]) -> (u16, String) {
        let mut curl = self
            .command("curl")
            .args(["-sS", "--noproxy", "*", "--max-time", "1800", "--cacert"])
            .arg(&self.server_ca)
            .args(["-o", "-", "-w", "%{stderr}%{http_code}"])
            .args(extra)
            .arg(self.pull_url(&format!("/v2/{repo}/blobs/{digest}")))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting curl");
        let body = curl.stdout.take().expect("curl's stdout");
        let sum = Command::new("openssl")
            .args(["dgst", "-sha256", "-r"])
            .stdin(body)
            .output()
            .expect("running openssl dgst");
        let out = curl.wait_with_output().expect("waiting for curl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "curl failed: {}: {stderr}",
            out.status
        );
        let code = stderr
            .trim()
            .rsplit('\n')
            .next()
            .unwrap_or("")
            .trim()
            .parse()
            .unwrap_or(0);
        (code, blob::digest_of(&sum.stdout))
    }

    /// One request with the bundle's CA as the only trust.
    pub fn curl(&self, args: &[&str], url: &str) -> Reply {
        let headers = self.work.join("curl.headers");
        let body = self.work.join("curl.body");
        let _ = std::fs::remove_file(&headers);
        let _ = std::fs::remove_file(&body);
        let out = output(
            self.command("curl")
                .args(["-sS", "--max-time", "20", "--noproxy", "*", "--cacert"])
                .arg(&self.server_ca)
                .arg("-D")
                .arg(&headers)
                .arg("-o")
                .arg(&body)
                .args(["-w", "%{http_code}"])
                .args(args)
                .arg(url),
        );
        let code = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let body = if code == 0 {
            // curl itself failed (TLS, connection): its message is what matters.
            format!("curl: {}", String::from_utf8_lossy(&out.stderr))
        } else {
            std::fs::read_to_string(&body).unwrap_or_default()
        };
        Reply {
            code,
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body,
        }
    }

    /// `program` as this client runs it: with the client's /etc/hosts when it has one.
    pub fn command(&self, program: &str) -> Command {
        match &self.names.hosts_file {
            None => Command::new(program),
            Some(hosts) => {
                // unshare(1) makes the new mount namespace private, so the bind mount
                // never reaches the host's own /etc/hosts.
                let mut cmd = Command::new("unshare");
                cmd.args(["--mount", "--", "sh", "-c"])
                    .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
                    .arg(hosts)
                    .arg(program);
                cmd
            }
        }
    }

    pub fn pull_url(&self, path: &str) -> String {
        let host = regimage::bundle::url_host(&self.names.host);
        format!("https://{host}:{}{path}", self.pull)
    }

    pub fn push_url(&self, path: &str) -> String {
        let host = regimage::bundle::url_host(&self.names.host);
        format!("https://{host}:{}{path}", self.push)
    }

    /// The image [`Client::push_and_pull`] made for `repo`.
    pub fn src_image(&self, repo: &str) -> PathBuf {
        self.work.join(format!("src-{}", repo.replace('/', "-")))
    }

    /// The manifest digest the pull port serves for `reference` (anonymous).
    pub fn pulled_digest(&self, reference: &str) -> String {
        let out = run_ok(self.skopeo(&self.home).args([
            "inspect",
            "--raw",
            &format!("docker://{}/{reference}", self.names.registry(self.pull)),
        ]));
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&out.stdout))
        )
    }

    /// Pushes a fresh image (its one layer holds `text`) as `repo:v1` through the push port
    /// and pulls it back through the pull port; returns its manifest digest.
    pub fn push_and_pull(&self, repo: &str, text: &str) -> String {
        let src = self.src_image(repo);
        let digest = super::make_oci_layout(&src, "v1", text);
        let t = Instant::now();
        run_ok(self.skopeo(&self.home).args([
            "copy",
            "--quiet",
            &format!("oci:{}:v1", s(&src)),
            &format!("docker://{}/{repo}:v1", self.names.registry(self.push)),
        ]));
        progress(&format!("pushed {repo}:v1 ({digest}) in {:.1} s", secs(t)));
        assert_eq!(
            self.pulled_digest(&format!("{repo}:v1")),
            digest,
            "the pull port serves another manifest for {repo}:v1"
        );
        let dst = self.work.join(format!("dst-{}", repo.replace('/', "-")));
        run_ok(self.skopeo(&self.home).args([
            "copy",
            "--quiet",
            &format!("docker://{}/{repo}:v1", self.names.registry(self.pull)),
            &format!("oci:{}:v1", s(&dst)),
        ]));
        let index =
            std::fs::read_to_string(dst.join("index.json")).expect("reading the pulled index");
        assert!(
            index.contains(&digest),
            "the pulled index lacks {digest}: {index}"
        );
        digest
    }

    /// What the proxy refuses: writes on the pull port (403, a registry-style JSON body);
    /// the push port without a client certificate or with one from another CA (400). The
    /// bundle's own certificate is accepted. `repo` is one [`Client::push_and_pull`] made.
    pub fn check_refusals(&self, repo: &str) {
        let src = self.src_image(repo);
        let pull_host = self.names.registry(self.pull);
        let push_host = self.names.registry(self.push);

        // A push to the pull port: denied, with the registry-style body (no HTML from nginx).
        let out = output(self.skopeo(&self.home).args([
            "copy",
            &format!("oci:{}:v1", s(&src)),
            &format!("docker://{pull_host}/refused/pull-port:v1"),
        ]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a push to the pull port succeeded");
        assert!(
            stderr.to_lowercase().contains("denied"),
            "skopeo did not report denied: {stderr}"
        );
        assert!(
            !stderr.contains("invalid character '<'"),
            "nginx answered HTML: {stderr}"
        );
        for method in ["PUT", "POST", "PATCH", "DELETE"] {
            let reply = self.curl(
                &["-X", method],
                &self.pull_url(&format!("/v2/{repo}/blobs/uploads/")),
            );
            assert_eq!(reply.code, 403, "{method} on the pull port: {}", reply.body);
            assert_registry_error(&reply.body, "DENIED");
        }
        progress("pull port: writes refused with 403 DENIED (JSON)");

        // The push port without a client certificate.
        let reply = self.curl(&[], &self.push_url("/v2/"));
        assert_eq!(
            reply.code, 400,
            "the push port answered a client without a certificate: {}",
            reply.body
        );
        let no_cert = self.work.join("no-cert-home");
        self.trust_only_the_server(&no_cert);
        let out = output(self.skopeo(&no_cert).args([
            "copy",
            &format!("oci:{}:v1", s(&src)),
            &format!("docker://{push_host}/refused/no-cert:v1"),
        ]));
        assert!(
            !out.status.success(),
            "a push without a client certificate succeeded"
        );

        // ... and with a certificate from another CA.
        let other = self.work.join("other-ca");
        std::fs::create_dir_all(&other).expect("creating the other CA dir");
        let sh = format!(
            "set -e; cd {d}; \
             openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=other-ca 2>/dev/null; \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client.key -out client.csr -subj /CN={name} 2>/dev/null; \
             printf 'extendedKeyUsage=clientAuth\\n' > ext; \
             openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.cert -days 2 -extfile ext 2>/dev/null",
            d = s(&other),
            name = self.name,
        );
        run_ok(Command::new("sh").args(["-c", &sh]));
        let (cert, key) = (s(&other.join("client.cert")), s(&other.join("client.key")));
        let reply = self.curl(&["--cert", &cert, "--key", &key], &self.push_url("/v2/"));
        assert_eq!(
            reply.code, 400,
            "the push port accepted another CA's certificate: {}",
            reply.body
        );
        let other_home = self.work.join("other-home");
        let d = self.trust_only_the_server(&other_home);
        std::fs::copy(other.join("client.cert"), d.join("client.cert")).expect("copying the cert");
        std::fs::copy(other.join("client.key"), d.join("client.key")).expect("copying the key");
        let out = output(self.skopeo(&other_home).args([
            "copy",
            &format!("oci:{}:v1", s(&src)),
            &format!("docker://{push_host}/refused/other-ca:v1"),
        ]));
        assert!(
            !out.status.success(),
            "a push with another CA's certificate succeeded"
        );

        // With the bundle's own certificate the push port answers.
        let (cert, key) = (s(&self.cert), s(&self.key));
        let reply = self.curl(&["--cert", &cert, "--key", &key], &self.push_url("/v2/"));
        assert_eq!(
            reply.code, 200,
            "the push port refused the bundle's certificate: {}",
            reply.body
        );
        progress(
            "push port: no certificate and another CA's certificate refused (400), the bundle's accepted",
        );
    }

    /// A HOME whose certs.d trusts the server CA for the push port and holds no client
    /// certificate; returns that certs.d directory.
    fn trust_only_the_server(&self, home: &Path) -> PathBuf {
        let d = home.join(format!(
            ".config/containers/certs.d/{}",
            self.names.registry(self.push)
        ));
        std::fs::create_dir_all(&d).expect("creating certs.d");
        std::fs::copy(&self.server_ca, d.join("ca.crt")).expect("copying the CA");
        d
    }
}
