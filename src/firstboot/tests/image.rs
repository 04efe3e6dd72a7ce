//! The registry image: the pinned digest and image ID, or a pull by digest.

#![allow(clippy::unwrap_used)] // tests may panic; see STYLE.md

use super::*;

#[test]
fn digest_mismatch_stops_before_anything_starts() {
    let mut m = machine(true);
    let other = format!("sha256:{}", "ab".repeat(32));
    m.config.registry.image = format!("docker.io/library/registry@{other}");
    let e = m.run().unwrap_err();
    let mismatch = e.chain().find_map(|c| c.downcast_ref::<PinMismatch>());
    assert!(mismatch.is_some(), "{e:#}");
    let text = format!("{e:#}");
    assert!(
        text.contains(&other) && text.contains(&m.archive.amd64_manifest),
        "{text}"
    );
    assert!(text.contains("registry-image"), "names the step: {text}");
    let calls = m.mutations();
    assert!(
        !calls.iter().any(|c| c.starts_with("podman_load")
            || c.starts_with("podman_tag")
            || c.starts_with("enable_unit")
            || c.starts_with("ufw")
            || (c.starts_with("start_unit") && !c.contains("user@"))),
        "{calls:#?}"
    );
    assert_eq!(
        std::fs::read(m.path(IMAGE_ARCHIVE_PATH)).unwrap(),
        m.archive.bytes
    );
    assert!(!m.path(render::FIRSTBOOT_DONE_PATH).exists());
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(m.path("/var/lib/regimage/out/status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["ready"], false);
    assert!(json["error"].as_str().unwrap().contains(&other));
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.last().unwrap()["name"], "registry-image");
    assert_eq!(steps.last().unwrap()["result"], "failed");
}

#[test]
fn loaded_image_must_have_the_pinned_id() {
    let m = machine(true);
    *m.fake.load_yields.borrow_mut() = "0".repeat(64);
    let e = format!("{:#}", m.run().unwrap_err());
    assert!(
        e.contains(&format!("no image with ID {}", m.archive.amd64_config)),
        "{e}"
    );
    // The tag by the pinned ID is what finds out (no listing after the load); nothing starts.
    assert!(!m
        .mutations()
        .iter()
        .any(|c| c.starts_with("start_unit User")));
}

#[test]
fn without_an_archive_the_pinned_image_is_pulled() {
    let m = machine(false);
    let status = m.run().unwrap();
    let pinned = m.config.registry.image.clone();
    assert!(m
        .mutations()
        .contains(&format!("podman_pull registry {pinned}")));
    let image = status.image.unwrap();
    assert_eq!(image.source, "pull");
    assert_eq!(image.id, format!("sha256:{}", "f00d".repeat(16)));
    let before = m.mutations().len();
    m.run().unwrap();
    assert_eq!(m.mutations().len(), before, "no second pull");
}
