//! Issue 12 at first boot: a node on S3 waits (bounded) for its credentials file and writes
//! the keys to registry.env; a joining node waits for the join file and takes the cluster's
//! CAs and HTTP secret from it; a join file for another cluster is refused.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;
use crate::cluster::JoinFile;
use crate::config::{S3Storage, Storage, StorageDriver};

const CREDENTIALS: &str = "[default]\naws_access_key_id = GKtest\naws_secret_access_key = s3cr3t\n";

fn s3_machine(wait_seconds: u32) -> Machine {
    let mut m = machine(true);
    m.config.registry.storage = Storage {
        driver: StorageDriver::S3,
        s3: Some(S3Storage {
            endpoint: Some("http://10.0.2.2:3900".into()),
            region: "garage".into(),
            bucket: "registry".into(),
            credentials_wait_seconds: wait_seconds,
            ..S3Storage::default()
        }),
    };
    m.config.cluster.name = Some("registry.example.com".into());
    m.config.validate("test").unwrap();
    m
}

fn put(m: &Machine, target: &str, contents: &[u8]) {
    let path = m.path(target);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

#[test]
fn a_node_on_s3_without_its_credentials_waits_then_stops_saying_what_it_waited_for() {
    let m = s3_machine(30);
    let e = format!("{:#}", m.run().unwrap_err());
    for part in [
        "first boot step users",
        "/etc/regimage/s3-credentials",
        "did not arrive within 30 s",
        "aws_access_key_id",
    ] {
        assert!(e.contains(part), "{part}: {e}");
    }
    assert!(m.fake.elapsed() >= Duration::from_secs(30));
    // Nothing of the registry's secrets was written before the keys came.
    assert!(!m.path("/etc/registry/registry.env").exists());
}

#[test]
fn a_node_on_s3_writes_its_keys_to_registry_env_and_syncs_with_the_cluster() {
    let m = s3_machine(30);
    put(&m, "/etc/regimage/s3-credentials", CREDENTIALS.as_bytes());
    let status = m.run().unwrap();
    assert!(status.ready, "{status:#?}");
    assert_eq!(status.primary_name, "registry.example.com");
    let env = std::fs::read_to_string(m.path("/etc/registry/registry.env")).unwrap();
    assert!(
        env.contains("REGISTRY_STORAGE_S3_ACCESSKEY=GKtest\n"),
        "{env}"
    );
    assert!(
        env.contains("REGISTRY_STORAGE_S3_SECRETKEY=s3cr3t\n"),
        "{env}"
    );
    assert!(env.contains("REGISTRY_HTTP_SECRET="), "{env}");
    // Images live in the bucket: no storage directory is made.
    assert!(!m.path("/var/lib/registry").exists());
    let calls = m.fake.calls.borrow().join("\n");
    assert!(calls.contains("regimage-cluster-sync.timer"), "{calls}");
    // The secret never reaches the journal's lines of what first boot changed.
    let report = format!("{status:?}");
    assert!(!report.contains("s3cr3t"), "{report}");
}

#[test]
fn a_joining_node_takes_the_clusters_cas_and_http_secret() {
    let first = s3_machine(30);
    put(
        &first,
        "/etc/regimage/s3-credentials",
        CREDENTIALS.as_bytes(),
    );
    first.run().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let join = JoinFile::export(first.root(), &first.config, now).unwrap();

    let mut second = s3_machine(30);
    second.config.cluster.join_file = Some("/etc/regimage/cluster-join.json".into());
    second.config.validate("test").unwrap();
    put(
        &second,
        "/etc/regimage/s3-credentials",
        CREDENTIALS.as_bytes(),
    );
    // Without the join file it waits, then stops before any CA is made.
    let e = format!("{:#}", second.run().unwrap_err());
    assert!(e.contains("/etc/regimage/cluster-join.json"), "{e}");
    assert!(e.contains("regimage cluster export"), "{e}");
    assert!(!second.path("/etc/registry/certs/ca/ca.crt").exists());

    join.write(&second.path("/etc/regimage/cluster-join.json"))
        .unwrap();
    let status = second.run().unwrap();
    assert!(status.ready, "{status:#?}");
    for ca in [
        "/etc/registry/certs/ca/ca.crt",
        "/etc/registry/certs/private/ca.key",
        "/etc/registry/certs/clients/ca.crt",
        "/etc/registry/certs/private/client-ca.key",
    ] {
        assert_eq!(
            std::fs::read(first.path(ca)).unwrap(),
            std::fs::read(second.path(ca)).unwrap(),
            "{ca}"
        );
    }
    let secret = |m: &Machine| {
        let env = std::fs::read_to_string(m.path("/etc/registry/registry.env")).unwrap();
        crate::registry_env::value(&env, "REGISTRY_HTTP_SECRET").map(str::to_string)
    };
    assert_eq!(secret(&first), secret(&second));
    assert_ne!(
        std::fs::read(first.path("/etc/registry/certs/registry.crt")).unwrap(),
        std::fs::read(second.path("/etc/registry/certs/registry.crt")).unwrap(),
        "each node has its own server certificate"
    );

    // A join file of another cluster is refused, naming both names.
    let mut third = s3_machine(30);
    third.config.cluster.name = Some("other.example.com".into());
    third.config.cluster.join_file = Some("/etc/regimage/cluster-join.json".into());
    put(
        &third,
        "/etc/regimage/s3-credentials",
        CREDENTIALS.as_bytes(),
    );
    join.write(&third.path("/etc/regimage/cluster-join.json"))
        .unwrap();
    let e = format!("{:#}", third.run().unwrap_err());
    assert!(
        e.contains("\"registry.example.com\"") && e.contains("\"other.example.com\""),
        "{e}"
    );
    assert!(!third.path("/etc/registry/certs/ca/ca.crt").exists());
}
