//! Real clients on real names: the shell blocks of the bundle README (taken from the bundle
//! that `regimage firstboot --no-system` made) run as written with Podman, Skopeo, curl,
//! Docker (Debian's docker.io: a dockerd started here) and containerd (`ctr`), against the
//! real registry and nginx on ports 443 and 4443, for a single-label name and a dotted one.
//! Each site lives in its own network namespace (tests/common/netns.rs): the names resolve
//! to an address of its own, and `/etc/containers`, `/etc/docker`, `/etc/containerd` are the
//! test's, so the README's `sudo cp` into them never touches this machine's.
//!
//! Needs root, iproute2, nginx, docker-registry, skopeo, curl, podman, docker.io,
//! containerd: `make test` runs it (scripts/install-test-deps.sh installs them).
//! "Copy the bundle off the registry" (ssh) is not run here; the VM test runs it.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::loopback::{self, Site, SiteOptions};
use common::netns::{self, Daemons, Netns};
use common::readme::{section_blocks, Runner};
use common::{require_tool, run_ok, s, test_dir};

/// The client name of the bundle the tests use.
const NAME: &str = "ci";

/// One site (registry and nginx in a namespace), its daemons, and what the README scripts
/// need. Dropped in field order: daemons, the site, then the namespace.
struct Ctx {
    _daemons: Daemons,
    site: Site,
    /// The README scripts' working directory: NAME.tar.gz and myimage.tar.
    cwd: PathBuf,
    readme: String,
    /// Root's runner: storage, daemons and HOME of the test, inside the namespace.
    runner: Runner,
    /// `registry_host` of the pull and push ports: what the README uses.
    pull: String,
    push: String,
    /// The digest of the manifest in myimage.tar (a push of the archive keeps it).
    image_digest: String,
    ns: Netns,
    _dir: tempfile::TempDir,
}

fn registry_host(host: &str, port: u16) -> String {
    regimage::bundle::registry_host(host, port)
}

impl Ctx {
    fn start(host: &str) -> Ctx {
        for (tool, package) in [
            ("ip", "iproute2"),
            ("podman", "podman"),
            ("dockerd", "docker.io"),
            ("containerd", "containerd"),
            ("ctr", "containerd"),
        ] {
            require_tool(tool, package);
        }
        let ns = Netns::new(&[host]);
        let site = loopback::start_site(&SiteOptions {
            hostname: host,
            extra_names: &[],
            pull: 443,
            push: 4443,
            registry: 5000,
            extra_config: "",
            netns: Some(&ns),
            root_files: &[],
        });
        let dir = test_dir("regimage-clients-");
        let work = dir.path().to_path_buf();
        let daemons = Daemons::start(&ns, &work.join("daemons"));
        let cwd = work.join("cwd");
        std::fs::create_dir(&cwd).expect("creating the scripts' dir");
        let tarball = site
            .root
            .join(format!("var/lib/regimage/out/{NAME}.tar.gz"));
        std::fs::copy(&tarball, cwd.join(format!("{NAME}.tar.gz"))).expect("copying the bundle");
        let unpacked = work.join("readme");
        std::fs::create_dir(&unpacked).expect("creating the readme dir");
        run_ok(
            std::process::Command::new("tar")
                .arg("-xzf")
                .arg(&tarball)
                .arg("-C")
                .arg(&unpacked),
        );
        let readme = std::fs::read_to_string(unpacked.join(format!("{NAME}/README.md")))
            .expect("reading the bundle README");

        let home = work.join("root-home");
        std::fs::create_dir(&home).expect("creating HOME");
        let mut runner = Runner::new(&cwd, &work)
            .env("HOME", &s(&home))
            .env("DOCKER_HOST", &daemons.docker_host)
            .env("CONTAINERD_ADDRESS", &s(&daemons.containerd_sock));
        for (k, v) in netns::podman_env(&work.join("podman")) {
            runner = runner.env(&k, &v);
        }
        runner.netns = Some(ns.name.clone());

        // The test image, in each client's store as the README expects it, and as an archive.
        let layout = work.join("image");
        common::make_oci_layout(&layout, "1.0", &format!("hello from {host}\n"));
        let oci = format!("oci:{}:1.0", s(&layout));
        runner.run(&[format!(
            "skopeo --insecure-policy copy -q {oci} oci-archive:myimage.tar\n\
             skopeo --insecure-policy copy -q {oci} containers-storage:localhost/myimage:1.0\n\
             skopeo --insecure-policy copy -q {oci} docker-archive:{docker_tar}:myimage:1.0\n\
             docker load -q -i {docker_tar}\n\
             ctr images import {docker_tar}\n\
             ctr images ls -q | grep -qx docker.io/library/myimage:1.0\n",
            docker_tar = s(&work.join("docker.tar")),
        )]);
        let image_digest = runner
            .run(&["skopeo inspect --format '{{.Digest}}' oci-archive:myimage.tar".to_string()])
            .trim()
            .to_string();
        Ctx {
            _daemons: daemons,
            pull: registry_host(host, 443),
            push: registry_host(host, 4443),
            site,
            cwd,
            readme,
            runner,
            image_digest,
            ns,
            _dir: dir,
        }
    }

    fn blocks(&self, sections: &[&[&str]]) -> Vec<String> {
        sections
            .iter()
            .flat_map(|path| section_blocks(&self.readme, path))
            .collect()
    }

    /// Runs the README sections in order as one script, as root.
    fn readme(&self, sections: &[&[&str]]) -> String {
        self.runner.run(&self.blocks(sections))
    }

    /// One of the test's own commands (not the README's), as root in the same setting.
    fn sh(&self, script: &str) -> String {
        self.runner.run(&[script.to_string()])
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.site.work.join("log/registry-proxy/access.log"))
            .unwrap_or_default()
    }

    /// Asserts that access-log lines after the first `before` lines show a manifest GET or
    /// HEAD of `repo` answered 200 on the pull port (no client certificate) to a client
    /// whose User-Agent holds `agent`.
    fn assert_pulled_here(&self, before: usize, repo: &str, agent: &str) {
        let log = self.access_log();
        let hit = log.lines().skip(before).any(|l| {
            (l.contains(&format!("\"GET /v2/{NAME}/{repo}/manifests/"))
                || l.contains(&format!("\"HEAD /v2/{NAME}/{repo}/manifests/")))
                && l.contains(" 200 ")
                && l.contains(agent)
                && (l.contains("client_dn=\"-\"") || l.contains("client_dn=\"\""))
        });
        assert!(
            hit,
            "no manifest request for {repo} from {agent} on the pull port in nginx's log:\n{}",
            log.lines().skip(before).collect::<Vec<_>>().join("\n")
        );
    }

    fn log_lines(&self) -> usize {
        self.access_log().lines().count()
    }
}

const UNPACK: &[&str] = &["Unpack"];
const CLEAN_UP: &[&str] = &["Clean up"];

/// All the README's client sections against one site named `host`.
fn readme_as_written(host: &str) {
    let t0 = Instant::now();
    let ctx = Ctx::start(host);
    let (pull, push) = (ctx.pull.clone(), ctx.push.clone());
    eprintln!("{host}: setup {:.1}s", t0.elapsed().as_secs_f64());

    // Podman, Buildah and Skopeo, system-wide: push with podman and skopeo, pull with both.
    let t = Instant::now();
    ctx.readme(&[
        UNPACK,
        &["Podman, Buildah and Skopeo", "Install"],
        &["Podman, Buildah and Skopeo", "Push"],
        CLEAN_UP,
    ]);
    for f in ["ca.crt", "client.cert", "client.key"] {
        let path = ctx.ns.etc(&format!("containers/certs.d/{push}/{f}"));
        assert!(
            path.is_file(),
            "the Install did not write {}",
            path.display()
        );
    }
    let id = ctx.sh("podman image inspect --format '{{.Id}}' localhost/myimage:1.0");
    ctx.sh(&format!(
        "podman rmi localhost/myimage:1.0 {push}/{NAME}/myimage:1.0 >/dev/null"
    ));
    let before = ctx.log_lines();
    let out = ctx.readme(&[&["Podman, Buildah and Skopeo", "Pull"]]);
    ctx.assert_pulled_here(before, "myimage", "containers/");
    let pulled = ctx.sh(&format!(
        "podman image inspect --format '{{{{.Id}}}} {{{{.Digest}}}}' {pull}/{NAME}/myimage:1.0"
    ));
    // What podman pulled is the local image (same ID) and the manifest the registry holds
    // for the tag (skopeo inspect of the README's Pull).
    let served = digest_after(&out, "\"Digest\": \"")
        .unwrap_or_else(|| panic!("skopeo inspect printed no digest:\n{out}"));
    assert_eq!(
        pulled.trim(),
        format!("{} {served}", id.trim()),
        "podman pulled another image"
    );
    eprintln!("{host}: podman+skopeo {:.1}s", t.elapsed().as_secs_f64());

    // Check the connection (after the system-wide install): both curls print {}.
    let out = ctx.readme(&[UNPACK, &["Check the connection"], CLEAN_UP]);
    assert_eq!(
        out.lines().filter(|l| l.trim() == "{}").count(),
        2,
        "the connection check did not print {{}} twice:\n{out}"
    );

    // Install for one user, run as that user (uid 65534, its own HOME): the user's certs.d
    // is what containers/image reads for a non-root user; skopeo pulls and pushes with it.
    let t = Instant::now();
    let user_dir = test_dir("regimage-user-");
    let user_cwd = user_dir.path().to_path_buf();
    std::fs::copy(
        ctx.cwd.join(format!("{NAME}.tar.gz")),
        user_cwd.join(format!("{NAME}.tar.gz")),
    )
    .expect("copying the bundle for the user");
    std::fs::copy(ctx.cwd.join("myimage.tar"), user_cwd.join("myimage.tar"))
        .expect("copying the archive for the user");
    run_ok(
        std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&user_cwd),
    );
    let mut user = Runner::new(&user_cwd, &user_cwd.join(".scratch")).env("HOME", &s(&user_cwd));
    user.netns = Some(ctx.ns.name.clone());
    user.user = Some(65534);
    user.run(&ctx.blocks(&[
        UNPACK,
        &["Podman, Buildah and Skopeo", "Install for one user"],
        CLEAN_UP,
    ]));
    let user_certs = user_cwd.join(".config/containers/certs.d");
    for f in ["ca.crt", "client.cert", "client.key"] {
        assert!(
            user_certs.join(&push).join(f).is_file(),
            "no {f} for {push} in {}",
            user_certs.display()
        );
    }
    let out = user.run(&[format!(
        "skopeo copy -q oci-archive:myimage.tar docker://{push}/{NAME}/user:1.0\n\
         skopeo inspect --format '{{{{.Digest}}}}' docker://{pull}/{NAME}/user:1.0\n"
    )]);
    assert_eq!(
        out.trim(),
        ctx.image_digest,
        "the user's push and pull differ"
    );
    eprintln!("{host}: one user {:.1}s", t.elapsed().as_secs_f64());

    // Docker: push, remove every local name of the image, pull it back.
    let t = Instant::now();
    let out = ctx.readme(&[
        UNPACK,
        &["Docker", "Install"],
        &["Docker", "Push"],
        CLEAN_UP,
    ]);
    let pushed = digest_in(&out).unwrap_or_else(|| panic!("docker push printed no digest:\n{out}"));
    let id = ctx.sh("docker image inspect --format '{{.Id}}' myimage:1.0");
    ctx.sh(&format!(
        "docker rmi myimage:1.0 {push}/{NAME}/myimage:1.0 >/dev/null\n\
         ! docker image inspect {} >/dev/null 2>&1",
        id.trim()
    ));
    let before = ctx.log_lines();
    ctx.readme(&[&["Docker", "Pull"]]);
    ctx.assert_pulled_here(before, "myimage", "docker/");
    let pulled = ctx.sh(&format!(
        "docker image inspect --format '{{{{.Id}}}} {{{{range .RepoDigests}}}}{{{{.}}}} {{{{end}}}}' {pull}/{NAME}/myimage:1.0"
    ));
    assert!(
        pulled.starts_with(id.trim()) && pulled.contains(&format!("@{pushed}")),
        "docker pulled another image: {pulled} (pushed {} as {pushed})",
        id.trim()
    );
    eprintln!("{host}: docker {:.1}s", t.elapsed().as_secs_f64());

    // containerd: push, remove the image and its content, pull it back.
    let t = Instant::now();
    ctx.readme(&[
        UNPACK,
        &["containerd", "Install"],
        &["containerd", "Push"],
        CLEAN_UP,
    ]);
    let pushed_ref = format!("{push}/{NAME}/myimage:1.0");
    let pushed = ctr_digest(&ctx, &pushed_ref);
    ctx.sh(&format!(
        "ctr images rm --sync docker.io/library/myimage:1.0 {pushed_ref} >/dev/null\n\
         ! ctr content info {pushed} >/dev/null 2>&1"
    ));
    let before = ctx.log_lines();
    ctx.readme(&[&["containerd", "Pull"]]);
    ctx.assert_pulled_here(before, "myimage", "containerd/");
    assert_eq!(
        ctr_digest(&ctx, &format!("{pull}/{NAME}/myimage:1.0")),
        pushed,
        "containerd pulled another image"
    );
    eprintln!("{host}: containerd {:.1}s", t.elapsed().as_secs_f64());

    // Nothing was refused on the way.
    let log = ctx.access_log();
    let refused = log.lines().filter(|l| l.contains("\" 429 ")).count();
    assert_eq!(refused, 0, "nginx answered 429 {refused} times:\n{log}");
    eprintln!("{host}: all {:.1}s", t0.elapsed().as_secs_f64());
}

/// The first `sha256:...` after "digest: " in `out` (what `docker push` prints).
fn digest_in(out: &str) -> Option<String> {
    digest_after(out, "digest: ")
}

/// The `sha256:<64 hex>` right after the first `marker` in `out`.
fn digest_after(out: &str, marker: &str) -> Option<String> {
    let at = out.find(marker)? + marker.len();
    let d = out.get(at..at + 71)?;
    d.starts_with("sha256:").then(|| d.to_string())
}

/// The manifest digest containerd holds for `reference`.
fn ctr_digest(ctx: &Ctx, reference: &str) -> String {
    let out = ctx.sh("ctr images ls");
    out.lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&reference)).then(|| cols[2].to_string())
        })
        .unwrap_or_else(|| panic!("containerd has no {reference}:\n{out}"))
}

#[test]
#[ignore = "needs root, podman, docker.io, containerd, nginx, docker-registry: run by `make test`"]
fn readme_as_written_single_label_name() {
    // `regbox` has no dot: clients would read regbox/ci/... as Docker Hub; the README
    // must say regbox:443.
    readme_as_written("regbox");
}

#[test]
#[ignore = "needs root, podman, docker.io, containerd, nginx, docker-registry: run by `make test`"]
fn readme_as_written_dotted_name() {
    readme_as_written("registry.example.test");
}

/// Docker (20.10, its default 3 parallel downloads, one attempt per layer before giving
/// up) pulls a 100-layer image through the default limits without a single 429.
#[test]
#[ignore = "needs root, docker.io, containerd, nginx, docker-registry: run by `make test`"]
fn docker_pulls_100_layers_with_default_limits() {
    let t0 = Instant::now();
    let ctx = Ctx::start("bigpull.example.test");
    let (pull, push) = (ctx.pull.clone(), ctx.push.clone());
    let layout = ctx.cwd.join("big");
    common::make_oci_layout_layers(&layout, "1", "big\n", 100);
    // In through the push port with skopeo and the bundle's certificate.
    ctx.readme(&[UNPACK, &["Docker", "Install"], CLEAN_UP]);
    let certs = ctx.ns.etc(&format!("docker/certs.d/{push}"));
    let before_push = ctx.log_lines();
    let t = Instant::now();
    ctx.sh(&format!(
        "skopeo --insecure-policy copy -q --dest-cert-dir {} oci:{}:1 docker://{push}/{NAME}/big:1",
        s(&certs),
        s(&layout)
    ));
    let pushed_in = t.elapsed().as_secs_f64();
    let before = ctx.log_lines();
    let push_refused = ctx
        .access_log()
        .lines()
        .skip(before_push)
        .filter(|l| l.contains("\" 429 "))
        .count();
    let t = Instant::now();
    let out = ctx.runner.clone().run(&[format!(
        "docker pull {pull}/{NAME}/big:1 2>&1 || echo PULL-FAILED"
    )]);
    let took = t.elapsed().as_secs_f64();
    let log = ctx.access_log();
    let refused = log
        .lines()
        .skip(before)
        .filter(|l| l.contains("\" 429 "))
        .count();
    eprintln!(
        "100-layer skopeo push {pushed_in:.1}s ({push_refused} answers of 429), docker pull {took:.1}s ({refused} answers of 429); whole test {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        refused, 0,
        "nginx answered 429 {refused} times to docker pull; it printed:\n{out}"
    );
    assert!(!out.contains("PULL-FAILED"), "docker pull failed:\n{out}");
    ctx.assert_pulled_here(before, "big", "docker/");
}

/// The extractor on a small README (no root needed).
mod extractor {
    use super::section_blocks;

    const MD: &str = "# Title\n\nintro\n\n```sh\necho intro\n```\n\n## Unpack\n\n```sh\ndir=$(mktemp -d)\n```\n\n## Podman\n### Install\n\n```sh\n# a comment, not a heading\nmkdir a\n```\n\n```text\nnot run\n```\n\n### Push\n```sh\npush podman\n```\n## Docker\n### Push\n```sh\npush docker\n```\n### Pull\ntext only\n";

    #[test]
    fn finds_blocks_by_heading_path() {
        assert_eq!(section_blocks(MD, &["Unpack"]), ["dir=$(mktemp -d)\n"]);
        assert_eq!(
            section_blocks(MD, &["Podman", "Install"]),
            ["# a comment, not a heading\nmkdir a\n"]
        );
        assert_eq!(section_blocks(MD, &["Podman", "Push"]), ["push podman\n"]);
        assert_eq!(section_blocks(MD, &["Docker", "Push"]), ["push docker\n"]);
        assert_eq!(
            section_blocks(MD, &["Podman"]),
            ["# a comment, not a heading\nmkdir a\n", "push podman\n"]
        );
    }

    #[test]
    #[should_panic(expected = "no section [\"Docker\", \"Install\"]")]
    fn missing_section_panics() {
        section_blocks(MD, &["Docker", "Install"]);
    }

    #[test]
    #[should_panic(expected = "holds no ```sh block")]
    fn section_without_sh_panics() {
        section_blocks(MD, &["Docker", "Pull"]);
    }

    #[test]
    #[should_panic(expected = "no section [\"Push\"]")]
    fn subsection_is_not_a_top_section() {
        // "Push" exists only under Podman and Docker; a path must follow the headings.
        section_blocks(MD, &["Push"]);
    }
}
