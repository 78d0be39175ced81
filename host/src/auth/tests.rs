//! The permission check and the table's changes.

use hyper::Method;

use super::*;

fn parts(path: &str) -> Vec<&str> {
    path.trim_matches('/').split('/').collect()
}

fn rule_of(method: Method, path: &str) -> Rule {
    rule(&method, &parts(path), false, false)
}

/// A table with `root` (by init), a `reader` role (query on kv) and user `alice` holding
/// it, and a token for each user. Returns the table and the two tokens.
fn table() -> (AuthTable, String, String) {
    let mut t = AuthTable::default();
    let (root_id, root) = new_token().expect("random");
    t.apply(
        &Op::Init {
            user: "root".into(),
            token_id: root_id,
            sha256: Op::hash_hex(&root),
        },
        1,
    )
    .expect("init");
    let grant = Grant::parse("query:kv").expect("grant");
    t.apply(
        &Op::RoleGrant {
            role: "reader".into(),
            grant,
        },
        2,
    )
    .expect("role");
    t.apply(
        &Op::UserAdd {
            user: "alice".into(),
            roles: vec!["reader".into()],
        },
        3,
    )
    .expect("user");
    let (alice_id, alice) = new_token().expect("random");
    t.apply(
        &Op::TokenCreate {
            user: "alice".into(),
            token_id: alice_id,
            sha256: Op::hash_hex(&alice),
            label: String::new(),
            ttl_ms: None,
        },
        4,
    )
    .expect("token");
    (t, root, alice)
}

#[test]
fn without_users_everything_is_open_and_with_users_a_token_is_needed() {
    let empty = AuthTable::default();
    let cmd = rule_of(Method::POST, "/v1/plugins/kv/commands");
    assert_eq!(check(&empty, &cmd, false, None), Ok(Caller::Anyone));
    let (t, _, _) = table();
    assert!(matches!(
        check(&t, &cmd, false, None),
        Err(Denied::NoToken(_))
    ));
    assert!(matches!(
        check(&t, &cmd, false, Some("keel_000000000000_forged")),
        Err(Denied::BadToken(_))
    ));
    // Open routes stay open.
    let health = rule_of(Method::GET, "/healthz");
    assert_eq!(check(&t, &health, false, None), Ok(Caller::Anyone));
}

#[test]
fn a_query_grant_allows_queries_on_its_plugin_only_and_never_commands() {
    let (t, _, alice) = table();
    let q = rule_of(Method::POST, "/v1/plugins/kv/query");
    assert!(matches!(
        check(&t, &q, false, Some(&alice)),
        Ok(Caller::User { .. })
    ));
    let other = rule_of(Method::POST, "/v1/plugins/app/query");
    let cmd = rule_of(Method::POST, "/v1/plugins/kv/commands");
    let deploy = rule_of(Method::PUT, "/v1/plugins/kv");
    let member = rule_of(Method::POST, "/v1/admin/members");
    for r in [&other, &cmd, &deploy, &member] {
        match check(&t, r, false, Some(&alice)) {
            Err(Denied::Missing { user, .. }) => assert_eq!(user, "alice"),
            other => panic!("{r:?}: {other:?}"),
        }
    }
    // The refusal names what is missing.
    let Err(Denied::Missing { need, .. }) = check(&t, &cmd, false, Some(&alice)) else {
        panic!("refused");
    };
    assert_eq!(need.to_string(), "command:kv");
}

#[test]
fn wildcards_admin_and_read_status() {
    let (t, root, alice) = table();
    for path in ["/v1/plugins/kv/commands", "/v1/plugins/app/query"] {
        assert!(check(&t, &rule_of(Method::POST, path), false, Some(&root)).is_ok());
    }
    assert!(
        check(
            &t,
            &rule_of(Method::PUT, "/v1/plugins/app"),
            false,
            Some(&root)
        )
        .is_ok()
    );
    assert!(
        check(
            &t,
            &rule_of(Method::POST, "/v1/admin/members"),
            false,
            Some(&root)
        )
        .is_ok()
    );
    let status = rule_of(Method::GET, "/v1/status");
    assert!(check(&t, &status, false, Some(&alice)).is_err());
    let admin_only: std::collections::BTreeSet<Grant> = [Grant::Admin].into();
    assert!(satisfies(&admin_only, &Need::Grant(Grant::ReadStatus)));
    // `query:*` does not grant `command:kv`.
    let q_all: std::collections::BTreeSet<Grant> = [Grant::Query("*".into())].into();
    assert!(satisfies(&q_all, &Need::Grant(Grant::Query("kv".into()))));
    assert!(!satisfies(
        &q_all,
        &Need::Grant(Grant::Command("kv".into()))
    ));
}

#[test]
fn peers_read_status_and_blobs_but_not_client_routes() {
    let (t, _, _) = table();
    for (m, p) in [
        (Method::GET, "/v1/status"),
        (Method::GET, "/v1/blobs/00"),
        (Method::HEAD, "/v1/blobs/00"),
    ] {
        assert_eq!(check(&t, &rule_of(m, p), true, None), Ok(Caller::Peer));
    }
    let upload = rule(&Method::PUT, &parts("/v1/blobs"), true, false);
    assert_eq!(check(&t, &upload, true, None), Ok(Caller::Peer));
    for (m, p) in [
        (Method::POST, "/v1/plugins/kv/commands"),
        (Method::POST, "/v1/admin/members"),
        (Method::PUT, "/v1/plugins/kv"),
    ] {
        assert!(check(&t, &rule_of(m, p), true, None).is_err(), "{p}");
    }
    // The peer transport has its own authentication.
    assert_eq!(
        check(&t, &rule_of(Method::POST, "/v1/raft/stream"), false, None),
        Ok(Caller::Anyone)
    );
    // /metrics is open unless the config says otherwise.
    assert!(check(&t, &rule_of(Method::GET, "/metrics"), false, None).is_ok());
    let protected = rule(&Method::GET, &parts("/metrics"), false, true);
    assert!(check(&t, &protected, false, None).is_err());
}

#[test]
fn a_revoked_token_and_a_removed_users_tokens_stop_working() {
    let (mut t, root, alice) = table();
    let q = rule_of(Method::POST, "/v1/plugins/kv/query");
    let id = token_id_of(&alice).expect("id").to_string();
    let (_, writes) = t
        .apply(
            &Op::TokenRevoke {
                token_id: id.clone(),
            },
            5,
        )
        .expect("revoke");
    assert_eq!(
        writes,
        vec![(format!("auth/token/{id}").into_bytes(), None)]
    );
    assert!(matches!(
        check(&t, &q, false, Some(&alice)),
        Err(Denied::BadToken(_))
    ));
    assert!(
        t.apply(&Op::TokenRevoke { token_id: id }, 6).is_err(),
        "already revoked"
    );
    assert!(check(&t, &q, false, Some(&root)).is_ok());
    // Removing root would leave no admin: refused, nothing changes.
    let before = t.clone();
    assert!(
        t.apply(
            &Op::UserRemove {
                user: "root".into()
            },
            7
        )
        .is_err()
    );
    assert_eq!(t, before);
}

#[test]
fn the_table_round_trips_through_its_records_and_init_is_once() {
    let (mut t, root, _) = table();
    let mut writes = Vec::new();
    t.diff(&AuthTable::default(), &mut writes);
    let records: Vec<(&[u8], &[u8])> = writes
        .iter()
        .filter_map(|(k, v)| Some((&k[..], v.as_deref()?)))
        .collect();
    assert_eq!(records.len(), writes.len(), "every record written");
    assert_eq!(AuthTable::from_records(records), Ok(t.clone()));
    let (id, other) = new_token().expect("random");
    let again = Op::Init {
        user: "root".into(),
        token_id: id,
        sha256: Op::hash_hex(&other),
    };
    assert!(
        t.apply(&again, 9).is_err(),
        "a second init with another token"
    );
    let root_id = token_id_of(&root).expect("id").to_string();
    let same = Op::Init {
        user: "root".into(),
        token_id: root_id,
        sha256: Op::hash_hex(&root),
    };
    assert!(t.apply(&same, 9).is_ok(), "the same init again is a no-op");
}

#[test]
fn the_first_user_must_come_by_init_and_grants_parse() {
    let mut t = AuthTable::default();
    assert!(
        t.apply(
            &Op::UserAdd {
                user: "bob".into(),
                roles: vec![]
            },
            1
        )
        .is_err()
    );
    assert!(!t.enabled());
    assert_eq!(Grant::parse("command:*"), Ok(Grant::Command("*".into())));
    assert_eq!(Grant::parse("read-status"), Ok(Grant::ReadStatus));
    assert!(Grant::parse("write:kv").is_err());
    assert!(Grant::parse("query:_auth").is_err());
    assert_eq!(bearer("Bearer abc"), Some("abc"));
    assert_eq!(bearer("bearer  abc "), Some("abc"));
    assert_eq!(bearer("Basic abc"), None);
    assert!(token_id_of("keel_0123456789ab_ff").is_some());
    assert!(token_id_of("nope").is_none());
}

/// Issue #16's routes: a backup needs `admin` (it holds every plugin's state); snapshot
/// images come only over the peer transport.
#[test]
fn a_backup_needs_admin_and_snapshot_images_only_come_from_peers() {
    assert_eq!(
        rule_of(Method::GET, "/v1/snapshot").need,
        Need::Grant(Grant::Admin)
    );
    assert_eq!(
        rule_of(Method::POST, "/v1/raft/snapshot").need,
        Need::PeerTransport
    );
}

#[test]
fn removing_a_role_takes_it_from_its_users_but_never_the_last_admin() {
    let (mut t, root, alice) = table();
    let kv_query = rule_of(Method::POST, "/v1/plugins/kv/query");
    assert!(check(&t, &kv_query, false, Some(&alice)).is_ok());
    let (answer, writes) = t
        .apply(
            &Op::RoleRemove {
                role: "reader".into(),
            },
            5,
        )
        .expect("removed");
    assert_eq!(answer["taken_from"], serde_json::json!(["alice"]));
    // The role's record goes and alice's record changes: both reach every node.
    assert!(
        writes
            .iter()
            .any(|(k, v)| k.ends_with(b"role/reader") && v.is_none())
    );
    assert!(writes.iter().any(|(k, _)| k.ends_with(b"user/alice")));
    assert!(check(&t, &kv_query, false, Some(&alice)).is_err());
    assert!(
        t.apply(
            &Op::RoleRemove {
                role: "reader".into()
            },
            6
        )
        .is_err()
    );
    let refused = t
        .apply(
            &Op::RoleRemove {
                role: "root".into(),
            },
            7,
        )
        .expect_err("root is the only admin");
    assert!(refused.contains("admin"), "{refused}");
    assert!(
        check(&t, &kv_query, false, Some(&root)).is_ok(),
        "unchanged"
    );
}

/// A token created with a TTL works until the entry's clock plus the TTL, by the checking
/// node's clock, then is refused (401, naming the token) with no entry needed; one without
/// a TTL never expires. The TTL is kept in the replicated record, so every node (and a
/// snapshot, a restart) judges the same deadline.
#[test]
fn a_token_with_a_ttl_stops_working_when_it_expires() {
    let (mut t, _, alice) = table();
    let (id, short) = new_token().expect("random");
    let (answer, writes) = t
        .apply(
            &Op::TokenCreate {
                user: "alice".into(),
                token_id: id.clone(),
                sha256: Op::hash_hex(&short),
                label: "an hour".into(),
                ttl_ms: Some(3_600_000),
            },
            1_000,
        )
        .expect("token");
    assert_eq!(answer["expires_ms"], 3_601_000);
    let q = rule_of(Method::POST, "/v1/plugins/kv/query");
    assert!(check_at(&t, &q, false, Some(&short), 3_600_999).is_ok());
    assert_eq!(
        check_at(&t, &q, false, Some(&short), 3_601_000),
        Err(Denied::Expired {
            token_id: id.clone(),
            at_ms: 3_601_000
        })
    );
    assert!(check_at(&t, &q, false, Some(&alice), u64::MAX).is_ok());
    // The stored record carries the deadline: a table rebuilt from it agrees.
    let records: Vec<(Vec<u8>, Vec<u8>)> = writes
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    let rebuilt =
        AuthTable::from_records(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .expect("records");
    assert_eq!(rebuilt.tokens[&id].expires_ms, Some(3_601_000));
    // A zero TTL is refused, not a token dead on arrival.
    let (id0, zero) = new_token().expect("random");
    assert!(
        t.apply(
            &Op::TokenCreate {
                user: "alice".into(),
                token_id: id0,
                sha256: Op::hash_hex(&zero),
                label: String::new(),
                ttl_ms: Some(0),
            },
            1_000,
        )
        .is_err()
    );
}
