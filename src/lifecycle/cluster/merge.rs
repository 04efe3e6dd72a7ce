//! Merging the client indexes of the other nodes into this node's: a pure function, so the
//! rules can be tested without a registry.
//!
//! Certificates are a union by serial, oldest first (a certificate revoked anywhere is revoked, at the
//! earliest time a node says). Per client name, the newest revocation across the nodes
//! against the newest issue across the nodes decides its state: revoked when the revocation
//! is at or after the issue (a certificate without `issued_at`, from before nodes recorded
//! it, is older than any revocation). A revoked name gets every certificate of that name
//! revoked, so a revoke on one node covers the certificate another node issued to the same
//! config client. The result does not depend on the order of `others`, and merging the same
//! states again changes nothing.

use std::collections::BTreeSet;

use time::OffsetDateTime;

use super::super::index::{parse_time, Client, Index, Issued, Origin, State};

/// `local` with every client and certificate of `others` merged in.
pub fn merge(local: &Index, others: &[Index]) -> Index {
    let mut out = local.clone();
    let mut new_names: BTreeSet<&str> = BTreeSet::new();
    for client in others.iter().flat_map(|i| &i.clients) {
        if local.get(&client.name).is_none() {
            new_names.insert(&client.name);
        }
    }
    for name in new_names {
        out.clients.push(Client {
            name: name.to_string(),
            origin: Origin::Cluster,
            state: State::Active,
            revoked_at: None,
            certificates: Vec::new(),
        });
    }
    for client in &mut out.clients {
        let remote: Vec<&Client> = others.iter().filter_map(|i| i.get(&client.name)).collect();
        merge_client(client, &remote);
    }
    out
}

/// Merges the other nodes' entries of one client into `client`.
fn merge_client(client: &mut Client, remote: &[&Client]) {
    let mut added: Vec<Issued> = Vec::new();
    for cert in remote.iter().flat_map(|c| &c.certificates) {
        let mine = client
            .certificates
            .iter_mut()
            .chain(added.iter_mut())
            .find(|c| c.serial == cert.serial);
        match mine {
            Some(mine) => {
                mine.revoked_at = earliest(mine.revoked_at.take(), cert.revoked_at.clone());
                mine.issued_at = earliest(mine.issued_at.take(), cert.issued_at.clone());
            }
            None => added.push(cert.clone()),
        }
    }
    if !added.is_empty() {
        // Oldest first, whichever node's they are: the same list on every node.
        client.certificates.extend(added);
        client.certificates.sort_by(|a, b| {
            (time_of(a.issued_at.as_deref()), &a.serial)
                .cmp(&(time_of(b.issued_at.as_deref()), &b.serial))
        });
    }

    let revoked_at = remote
        .iter()
        .map(|c| c.revoked_at.clone())
        .fold(client.revoked_at.clone(), latest);
    let issued_at = client
        .certificates
        .iter()
        .map(|c| c.issued_at.clone())
        .fold(None, latest);
    // An unset issue time is older than any revocation (None < Some).
    let revoked =
        revoked_at.is_some() && time_of(revoked_at.as_deref()) >= time_of(issued_at.as_deref());
    if revoked {
        client.state = State::Revoked;
        client.revoked_at = revoked_at.clone();
        for cert in &mut client.certificates {
            if cert.revoked_at.is_none() {
                cert.revoked_at = revoked_at.clone();
            }
        }
    } else {
        if client.state == State::Revoked {
            // Issued again on another node after the revoke: its key lives there.
            client.origin = Origin::Cluster;
        }
        client.state = State::Active;
        client.revoked_at = None;
    }
}

/// A time for ordering: unset (or unreadable) is older than any.
fn time_of(text: Option<&str>) -> Option<OffsetDateTime> {
    text.and_then(|t| parse_time(t).ok())
}

fn earliest(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) if time_of(Some(&b)) < time_of(Some(&a)) => Some(b),
        (a, b) => a.or(b),
    }
}

fn latest(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) if time_of(Some(&b)) > time_of(Some(&a)) => Some(b),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
    const T1: OffsetDateTime = datetime!(2026-01-02 00:00 UTC);
    const T2: OffsetDateTime = datetime!(2026-01-03 00:00 UTC);
    const END: &str = "2027-01-01T00:00:00Z";

    /// A node that issued `ci` from its config at `at`, serial `serial`.
    fn node(serial: &str, at: OffsetDateTime) -> Index {
        let mut index = Index::default();
        index.activate("ci", Origin::Config);
        index.record("ci", serial, END, at);
        index
    }

    fn client<'a>(index: &'a Index, name: &str) -> &'a Client {
        index.get(name).unwrap()
    }

    #[test]
    fn a_revoke_on_one_node_covers_the_certificate_another_issued() {
        let mut a = node("0a", T0);
        a.revoke("ci", T1);
        let b = node("0b", T0);
        let merged = merge(&b, std::slice::from_ref(&a));
        let ci = client(&merged, "ci");
        assert_eq!(ci.state, State::Revoked);
        assert_eq!(ci.origin, Origin::Config);
        let mut serials: Vec<String> = merged
            .revoked_serials()
            .into_iter()
            .map(|r| r.serial)
            .collect();
        serials.sort();
        assert_eq!(serials, ["0a", "0b"]);
        assert!(merged.issuable().is_empty());
    }

    #[test]
    fn a_reissue_after_the_revoke_wins_and_stays_with_its_node() {
        let mut a = node("0a", T0);
        a.revoke("ci", T1);
        let b = merge(&node("0b", T0), std::slice::from_ref(&a));
        // Issued again on A after the revoke.
        a.activate("ci", Origin::Added);
        a.record("ci", "0c", END, T2);
        let merged = merge(&b, std::slice::from_ref(&a));
        let ci = client(&merged, "ci");
        assert_eq!(ci.state, State::Active);
        assert_eq!(ci.origin, Origin::Cluster, "B must not issue it again");
        assert!(ci.revoked_at.is_none());
        assert_eq!(merged.revoked_serials().len(), 2, "0a and 0b stay revoked");
        // A, merging B's old state, keeps its reissue.
        let a2 = merge(&a, std::slice::from_ref(&b));
        assert_eq!(client(&a2, "ci").state, State::Active);
        assert_eq!(client(&a2, "ci").origin, Origin::Added);
    }

    #[test]
    fn a_certificate_without_issue_time_is_older_than_any_revocation() {
        let mut a = node("0a", T2);
        a.revoke("ci", T1);
        // Made by hand: A's revoke at T1, then B's certificate of an older regimage.
        let mut b = Index::default();
        b.activate("ci", Origin::Config);
        b.clients[0].certificates.push(Issued {
            serial: "0b".into(),
            not_after: END.into(),
            issued_at: None,
            revoked_at: None,
        });
        a.clients[0].certificates[0].issued_at = Some(crate::pki::rfc3339(T0));
        let merged = merge(&b, &[a]);
        assert_eq!(client(&merged, "ci").state, State::Revoked);
    }

    #[test]
    fn clients_of_other_nodes_come_with_origin_cluster() {
        let mut a = node("0a", T0);
        a.activate("web", Origin::Added);
        a.record("web", "0d", END, T1);
        let merged = merge(&node("0b", T0), &[a]);
        let web = client(&merged, "web");
        assert_eq!(web.origin, Origin::Cluster);
        assert_eq!(web.state, State::Active);
        assert_eq!(merged.active(), ["ci", "web"]);
        assert_eq!(merged.issuable(), ["ci"]);
    }

    #[test]
    fn the_earliest_revocation_of_a_serial_stands() {
        let mut a = node("0a", T0);
        a.revoke("ci", T2);
        let mut b = a.clone();
        b.clients[0].certificates[0].revoked_at = Some(crate::pki::rfc3339(T1));
        let merged = merge(&a, &[b]);
        assert_eq!(
            merged.clients[0].certificates[0].revoked_at.as_deref(),
            Some("2026-01-02T00:00:00Z")
        );
        assert_eq!(merged.clients[0].certificates.len(), 1);
    }

    #[test]
    fn merging_is_idempotent_and_order_independent() {
        let mut a = node("0a", T0);
        a.activate("web", Origin::Added);
        a.record("web", "0d", END, T1);
        a.revoke("ci", T1);
        let mut b = node("0b", T0);
        b.activate("db", Origin::Added);
        b.record("db", "0e", END, T0);
        let mut c = node("0c", T0);
        c.activate("web", Origin::Added);
        c.record("web", "0f", END, T0);
        c.activate("zz", Origin::Added);
        c.revoke("zz", T2);
        let local = node("01", T0);
        let ab = merge(&local, &[a.clone(), b.clone(), c.clone()]);
        let ba = merge(&local, &[c.clone(), b.clone(), a.clone()]);
        assert_eq!(ab, ba);
        assert_eq!(merge(&ab, &[a.clone(), b.clone(), c.clone()]), ab);
        let set = |i: &Index| {
            type Certs = Vec<(String, Option<String>)>;
            let mut v: Vec<(String, State, Certs)> = i
                .clients
                .iter()
                .map(|c| {
                    let mut certs: Vec<_> = c
                        .certificates
                        .iter()
                        .map(|x| (x.serial.clone(), x.revoked_at.clone()))
                        .collect();
                    certs.sort();
                    (c.name.clone(), c.state, certs)
                })
                .collect();
            v.sort_by(|x, y| x.0.cmp(&y.0));
            v
        };
        // One node at a time comes to the same clients and certificates (in the order they
        // arrived).
        let stepwise = merge(&merge(&merge(&local, &[c.clone()]), &[a.clone()]), &[b]);
        assert_eq!(set(&stepwise), set(&ab));
        assert_eq!(client(&ab, "ci").state, State::Revoked);
        assert_eq!(client(&ab, "web").state, State::Active);
        assert_eq!(client(&ab, "zz").state, State::Revoked);
        assert_eq!(ab.revoked_serials().len(), 4, "01, 0a, 0b, 0c: {ab:#?}");
        // Every node ends with the same clients and certificates.
        let on_a = merge(&merge(&a, &[local, c]), std::slice::from_ref(&ab));
        assert_eq!(set(&on_a), set(&ab));
    }
}
