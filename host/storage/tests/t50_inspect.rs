//! `keel inspect`: the report of a data directory, and its refusals.

mod common;

use common::{batch, entries};
use keel_raft::{ClusterConfig, ClusterId, HardState, SnapshotMeta};
use keel_storage::{
    DATA_FILE, Identity, LogId, LogWrite, RedbStorage, Storage, StorageOptions, inspect,
};

#[test]
fn inspect_reports_identity_term_log_applied_and_namespaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = RedbStorage::open(dir.path(), StorageOptions::default()).expect("open");
        s.set_identity(Identity {
            cluster: ClusterId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            node: 2,
        })
        .expect("identity");
        s.persist(LogWrite {
            hard_state: Some(HardState {
                term: 5,
                vote: Some(3),
            }),
            entries: &entries(1, 20, 5),
            ..LogWrite::default()
        })
        .expect("persist");
        s.apply(&batch(&entries(1, 12, 5))).expect("apply");
        s.purge(&SnapshotMeta {
            index: 4,
            term: 5,
            config: ClusterConfig::default(),
        })
        .expect("purge");
        s.close().expect("close");
    }
    let report = inspect(dir.path()).expect("inspect");
    assert_eq!(
        report.hard_state,
        HardState {
            term: 5,
            vote: Some(3)
        }
    );
    assert_eq!(report.first, Some(LogId { index: 5, term: 5 }));
    assert_eq!(report.log.last, LogId { index: 20, term: 5 });
    assert_eq!(report.last_applied, LogId { index: 12, term: 5 });
    assert_eq!(report.snapshot_index, 4);
    // Even entries go to alpha, odd to beta; keys are index % 17, minus deletions.
    assert_eq!(
        report
            .namespaces
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    let text = report.to_string();
    for line in [
        "cluster:       01234567-89ab-cdef-0123-456789abcdef",
        "node id:       2",
        "term:          5",
        "vote:          3",
        "log first:     5@t5",
        "log last:      20@t5",
        "last applied:  12@t5",
        "snapshot:      4",
        "  alpha: ",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn inspect_refuses_a_missing_busy_corrupt_or_foreign_file_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = inspect(dir.path()).expect_err("missing");
    assert!(err.to_string().contains(DATA_FILE), "{err}");
    assert!(
        !dir.path().join(DATA_FILE).exists(),
        "inspect created a data file"
    );

    {
        let _node = RedbStorage::open(dir.path(), StorageOptions::default()).expect("open");
        let err = inspect(dir.path()).expect_err("in use");
        assert!(
            matches!(err, keel_storage::StorageError::InUse { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(DATA_FILE), "{err}");
    }

    std::fs::write(dir.path().join(DATA_FILE), b"not a database").expect("write");
    let err = inspect(dir.path()).expect_err("foreign");
    assert!(err.to_string().contains(DATA_FILE), "{err}");
}
