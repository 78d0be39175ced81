//! The durable store: one redb file per node, `DATA_DIR/keel.redb`.
//!
//! Tables: `log` (index → crc32 ‖ postcard Entry), `meta` (format marker, identity, hard state,
//! snapshot point, applied state), `kv` ((namespace, key) → value) and `sessions`
//! (client id → postcard Session). See `docs/storage.md` for the durability argument.
//!
//! Log appends are one-phase redb commits (one fsync); everything rare is two-phase. The file
//! is opened through [`guard::HeaderLast`], with the boot record beside it, so that a damaged
//! newest commit fails the open instead of being silently rolled back (`guard.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_raft::{ClusterConfig, Entry, HardState, Index, SnapshotMeta, Term};
use redb::backends::FileBackend;
use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    StorageBackend, TableDefinition, TableHandle, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::guard::{self, HeaderLast, Sealer, Verdict};
use crate::plan::{self, PersistPlan};
use crate::snapshot::ImageRecord;
use crate::{
    AppliedState, ApplyBatch, Identity, KvPairs, KvRange, KvRecord, LogBounds, LogId, LogWrite,
    RecoveredState, Session, StateView, Storage, StorageError, StorageOptions, codec,
};

/// Name of the data file inside a node's data directory.
pub const DATA_FILE: &str = "keel.redb";

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const KV: TableDefinition<'_, (&str, &[u8]), &[u8]> = TableDefinition::new("kv");
const SESSIONS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("sessions");

/// Value of the `format` key: bumped on any incompatible change of the layout.
/// 2: sessions carry `last_ms` (expiry). A data file of another format is refused at open.
const FORMAT: &[u8] = b"keel-storage/2";
const K_FORMAT: &str = "format";
const K_IDENTITY: &str = "identity";
const K_HARD_STATE: &str = "hard_state";
const K_SNAPSHOT: &str = "snapshot";
const K_APPLIED: &str = "applied";

/// How a write transaction commits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// Log appends (and durable applies): one fsync, unless `two_phase_commit` is set.
    Frequent,
    /// Everything rare: hard state, snapshots, purges, identity, sync. Always two-phase, so a
    /// fall-back can never undo a vote (docs/storage.md).
    Rare,
    /// No fsync (applies).
    NonDurable,
}

/// The redb-backed [`Storage`].
pub struct RedbStorage {
    // First, so that the seal thread stops before the database is dropped.
    sealer: Option<Sealer>,
    db: Arc<Database>,
    path: Arc<PathBuf>,
    options: StorageOptions,
    rolled_back: bool,
}

impl fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStorage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Adds the file and the operation to any redb error.
trait Ctx<T> {
    fn ctx(self, path: &Path, op: &'static str) -> Result<T, StorageError>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, path: &Path, op: &'static str) -> Result<T, StorageError> {
        self.map_err(|e| StorageError::Redb {
            path: path.to_path_buf(),
            op,
            source: Box::new(e.into()),
        })
    }
}

impl RedbStorage {
    /// Opens (creating if needed) the data file in `dir`. Every page's checksum is verified first:
    /// a damaged file fails here, with an error naming it, instead of serving wrong data.
    ///
    /// A new file is laid out under a temporary name and renamed into place, so an existing
    /// `keel.redb` always carries Keel's format marker: an empty or truncated one is refused
    /// rather than mistaken for a new node (which would forget its vote).
    pub fn open(dir: &Path, options: StorageOptions) -> Result<Self, StorageError> {
        let path = dir.join(DATA_FILE);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| StorageError::Open {
                path,
                source: Box::new(redb::Error::Io(e)),
            }
        };
        if !path.try_exists().map_err(io_err(&path))? {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            let tmp = dir.join(format!("{DATA_FILE}.new"));
            match std::fs::remove_file(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&tmp)(e)),
            }
            let db = builder(&options)
                .create(&tmp)
                .map_err(|e| StorageError::Open {
                    path: tmp.clone(),
                    source: Box::new(e.into()),
                })?;
            Self::init(db, tmp.clone(), options.clone(), true)?.close()?;
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
            // The rename is durable only once the directory is.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
        Self::open_existing(dir, options)
    }

    /// Opens an existing data file in `dir`, never creating one (for the inspector).
    ///
    /// If the newest commit fails its checksums, the open fails with
    /// [`StorageError::NewestCommitDamaged`] unless the boot record shows the machine restarted
    /// since the file was last written (then the commit may have been torn, was never
    /// acknowledged, and redb falls back to the one before: see [`Self::rolled_back`]).
    pub fn open_existing(dir: &Path, options: StorageOptions) -> Result<Self, StorageError> {
        let path = dir.join(DATA_FILE);
        let current = guard::current_boot();
        let recorded = guard::recorded_boot(dir);
        let allow = guard::torn_possible(recorded.as_deref(), current.as_deref());
        let verdict = Verdict::default();
        let mut b = builder(&options);
        b.set_repair_callback(verdict.callback(allow));
        let open_err = |e: std::io::Error| StorageError::Open {
            path: path.clone(),
            source: Box::new(redb::Error::Io(e)),
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(open_err)?;
        // Opened through a backend (to order header writes), redb would lay out a new database
        // in an empty file: refuse it first, it is a damaged one (see `open`).
        if file.metadata().map_err(open_err)?.len() == 0 {
            return Err(StorageError::Foreign {
                path,
                reason: "the file is empty".into(),
            });
        }
        let backend = FileBackend::new(file).map_err(|e| StorageError::Open {
            path: path.clone(),
            source: Box::new(e.into()),
        })?;
        let (backend, open_done) = HeaderLast::new(backend, allow, verdict.clone());
        let db = b.create_with_backend(backend).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StorageError::InUse { path: path.clone() },
            // Refused by the repair callback (RepairAborted) or by the backend (an I/O
            // error on the header write).
            _ if verdict.fell_back() && !allow => StorageError::NewestCommitDamaged {
                path: path.clone(),
                why: if recorded.is_none() || current.is_none() {
                    "the boot it was written in is unknown (no readable boot record), so \
                         it cannot be told from damage after its fsync"
                } else {
                    "the machine has not restarted since it was written, so it is not a \
                         torn write but damage after its fsync"
                },
            },
            e => StorageError::Open {
                path: path.clone(),
                source: Box::new(e.into()),
            },
        })?;
        open_done.done();
        let rolled_back = verdict.fell_back();
        if rolled_back {
            tracing::warn!(
                target: "keel::txn",
                path = %path.display(),
                "the newest commit failed its checksums after a machine restart: a torn write, \
                 never acknowledged; reopened at the commit before it"
            );
        }
        // Recorded before any one-phase commit of this process, so that damage to one of them
        // is never taken for a torn write in this boot.
        if let Some(boot) = &current
            && recorded.as_ref() != Some(boot)
        {
            guard::record_boot(dir, boot)?;
        }
        let mut store = Self::init(db, path, options, false)?;
        store.rolled_back = rolled_back;
        Ok(store)
    }

    /// Whether this open found the newest commit torn (after a machine restart) and reopened
    /// the commit before it. Never true for damage the machine could not have caused by going
    /// down: that fails the open.
    pub fn rolled_back(&self) -> bool {
        self.rolled_back
    }

    /// Opens a database on a custom redb backend; `path` only labels errors. Used to inject
    /// I/O failures (a full disk) in tests.
    pub fn open_with_backend(
        path: PathBuf,
        backend: impl StorageBackend,
        options: StorageOptions,
    ) -> Result<Self, StorageError> {
        let db = builder(&options)
            .create_with_backend(backend)
            .map_err(|e| StorageError::Open {
                path: path.clone(),
                source: Box::new(e.into()),
            })?;
        Self::init(db, path, options, true)
    }

    /// The data file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the format marker, or lays out a new file.
    fn init(
        db: Database,
        path: PathBuf,
        options: StorageOptions,
        may_create: bool,
    ) -> Result<Self, StorageError> {
        let p = path.as_path();
        let foreign = |reason: String| StorageError::Foreign {
            path: path.clone(),
            reason,
        };
        let tables: Vec<String> = {
            let txn = db.begin_read().ctx(p, "begin read (open)")?;
            let list = txn.list_tables().ctx(p, "list tables")?;
            list.map(|t| t.name().to_string()).collect()
        };
        if tables.is_empty() {
            if !may_create {
                return Err(foreign("the database is empty".into()));
            }
            let txn = db.begin_write().ctx(p, "begin write (create)")?;
            {
                let mut meta = txn.open_table(META).ctx(p, "create table meta")?;
                meta.insert(K_FORMAT, FORMAT).ctx(p, "write meta format")?;
                txn.open_table(LOG).ctx(p, "create table log")?;
                txn.open_table(KV).ctx(p, "create table kv")?;
                txn.open_table(SESSIONS).ctx(p, "create table sessions")?;
            }
            txn.commit().ctx(p, "commit (create)")?;
        } else {
            if !tables.iter().any(|t| t == META.name()) {
                return Err(foreign(format!(
                    "no `meta` table (tables: {})",
                    tables.join(", ")
                )));
            }
            let txn = db.begin_read().ctx(p, "begin read (open)")?;
            let meta = txn
                .open_table(META)
                .map_err(|e| foreign(format!("table `meta` is not Keel's: {e}")))?;
            let format = meta
                .get(K_FORMAT)
                .ctx(p, "read meta format")?
                .map(|g| g.value().to_vec());
            match format {
                Some(f) if f == FORMAT => {}
                Some(f) => {
                    return Err(foreign(format!(
                        "format {:?}, this build reads {:?}",
                        String::from_utf8_lossy(&f),
                        String::from_utf8_lossy(FORMAT)
                    )));
                }
                None => return Err(foreign("no format marker".into())),
            }
            for (name, check) in [
                ("log", txn.open_table(LOG).map(drop)),
                ("kv", txn.open_table(KV).map(drop)),
                ("sessions", txn.open_table(SESSIONS).map(drop)),
            ] {
                check.map_err(|e| foreign(format!("table `{name}`: {e}")))?;
            }
        }
        let db = Arc::new(db);
        let path = Arc::new(path);
        let sealer = match options.seal_after {
            Some(idle) if !options.two_phase_commit => {
                Some(Sealer::start(Arc::clone(&db), Arc::clone(&path), idle))
            }
            _ => None,
        };
        Ok(RedbStorage {
            sealer,
            db,
            path,
            options,
            rolled_back: false,
        })
    }

    fn begin_write(
        &self,
        op: &'static str,
        commit: Commit,
    ) -> Result<WriteTransaction, StorageError> {
        let mut txn = self.db.begin_write().ctx(&self.path, op)?;
        match commit {
            Commit::Frequent => txn.set_two_phase_commit(self.options.two_phase_commit),
            Commit::Rare => txn.set_two_phase_commit(true),
            Commit::NonDurable => txn.set_durability(Durability::None).ctx(&self.path, op)?,
        }
        Ok(txn)
    }

    /// Commits `txn`, made by [`Self::begin_write`] with `commit`.
    fn commit(
        &self,
        txn: WriteTransaction,
        commit: Commit,
        op: &'static str,
    ) -> Result<(), StorageError> {
        txn.commit().ctx(&self.path, op)?;
        if commit == Commit::Frequent
            && !self.options.two_phase_commit
            && let Some(s) = &self.sealer
        {
            s.note_one_phase();
        }
        Ok(())
    }

    fn begin_read(&self) -> Result<ReadTransaction, StorageError> {
        self.db.begin_read().ctx(&self.path, "begin read")
    }

    /// Closes the file after making every commit durable (with a two-phase commit, so the file
    /// is left sealed).
    pub fn close(self) -> Result<(), StorageError> {
        self.sync()?;
        let RedbStorage {
            sealer, db, path, ..
        } = self;
        drop(sealer);
        match Arc::try_unwrap(db) {
            Ok(db) => db.close().ctx(&path, "close"),
            // Only the seal thread shares it, and it has stopped; dropping closes it too.
            Err(db) => {
                drop(db);
                Ok(())
            }
        }
    }
}

fn builder(options: &StorageOptions) -> redb::Builder {
    let mut b = Database::builder();
    b.set_check_integrity_on_open(true);
    b.set_cache_size(options.cache_bytes);
    b
}

fn meta_get<T: DeserializeOwned>(
    path: &Path,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, StorageError> {
    let Some(guard) = meta.get(key).ctx(path, "read table meta")? else {
        return Ok(None);
    };
    codec::decode(path, || format!("meta `{key}`"), guard.value()).map(Some)
}

fn meta_put<T: Serialize>(
    path: &Path,
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    key: &'static str,
    value: &T,
) -> Result<(), StorageError> {
    let bytes = codec::encode(value, || format!("meta `{key}`"))?;
    meta.insert(key, bytes.as_slice())
        .ctx(path, "write table meta")?;
    Ok(())
}

/// The pieces of `meta` every write checks against.
struct MetaState {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    applied: AppliedState,
}

fn read_meta(
    path: &Path,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<MetaState, StorageError> {
    Ok(MetaState {
        hard_state: meta_get(path, meta, K_HARD_STATE)?.unwrap_or_default(),
        snapshot: meta_get(path, meta, K_SNAPSHOT)?.unwrap_or_default(),
        applied: meta_get(path, meta, K_APPLIED)?.unwrap_or_default(),
    })
}

fn bounds(
    path: &Path,
    snapshot: &SnapshotMeta,
    log: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<LogBounds, StorageError> {
    let snap = LogId {
        index: snapshot.index,
        term: snapshot.term,
    };
    let last = match log.last().ctx(path, "read last of table log")? {
        Some((k, v)) => LogId::of(&codec::decode_entry(path, k.value(), v.value())?),
        None => snap,
    };
    Ok(LogBounds {
        snapshot: snap,
        last,
    })
}

fn term_at(
    path: &Path,
    snapshot: &SnapshotMeta,
    log: &impl ReadableTable<u64, &'static [u8]>,
    index: Index,
) -> Result<Option<Term>, StorageError> {
    if index == snapshot.index {
        return Ok(Some(snapshot.term));
    }
    match log.get(index).ctx(path, "read table log")? {
        Some(v) => Ok(Some(codec::decode_entry(path, index, v.value())?.term)),
        None => Ok(None),
    }
}

impl Storage for RedbStorage {
    type View = RedbView;

    fn recover(&self) -> Result<RecoveredState, StorageError> {
        let p = self.path.as_path();
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).ctx(p, "open table meta")?;
        let log = txn.open_table(LOG).ctx(p, "open table log")?;
        let m = read_meta(p, &meta)?;
        Ok(RecoveredState {
            identity: meta_get(p, &meta, K_IDENTITY)?,
            hard_state: m.hard_state,
            log: bounds(p, &m.snapshot, &log)?,
            snapshot: m.snapshot,
            applied: m.applied,
        })
    }

    fn set_identity(&self, identity: Identity) -> Result<(), StorageError> {
        let p = self.path.as_path();
        let txn = self.begin_write("begin write (identity)", Commit::Rare)?;
        {
            let mut meta = txn.open_table(META).ctx(p, "open table meta")?;
            match meta_get::<Identity>(p, &meta, K_IDENTITY)? {
                Some(stored) if stored == identity => return Ok(()),
                Some(stored) => {
                    return Err(StorageError::IdentityMismatch {
                        stored,
                        given: identity,
                    });
                }
                None => meta_put(p, &mut meta, K_IDENTITY, &identity)?,
            }
        }
        self.commit(txn, Commit::Rare, "commit (identity)")
    }

    fn bootstrap(&self, config: &ClusterConfig) -> Result<(), StorageError> {
        let p = self.path.as_path();
        let txn = self.begin_write("begin write (bootstrap)", Commit::Rare)?;
        {
            let mut meta = txn.open_table(META).ctx(p, "open table meta")?;
            let mut applied = read_meta(p, &meta)?.applied;
            plan::check_bootstrap(&applied, config)?;
            if applied.last_applied.index == 0 {
                applied.config = config.clone();
                meta_put(p, &mut meta, K_APPLIED, &applied)?;
            }
        }
        self.commit(txn, Commit::Rare, "commit (bootstrap)")
    }

    fn hard_state(&self) -> Result<HardState, StorageError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).ctx(&self.path, "open table meta")?;
        Ok(meta_get(&self.path, &meta, K_HARD_STATE)?.unwrap_or_default())
    }

    fn log_bounds(&self) -> Result<LogBounds, StorageError> {
        let p = self.path.as_path();
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).ctx(p, "open table meta")?;
        let log = txn.open_table(LOG).ctx(p, "open table log")?;
        let snapshot: SnapshotMeta = meta_get(p, &meta, K_SNAPSHOT)?.unwrap_or_default();
        bounds(p, &snapshot, &log)
    }

    fn term(&self, index: Index) -> Result<Option<Term>, StorageError> {
        let p = self.path.as_path();
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).ctx(p, "open table meta")?;
        let log = txn.open_table(LOG).ctx(p, "open table log")?;
        let snapshot: SnapshotMeta = meta_get(p, &meta, K_SNAPSHOT)?.unwrap_or_default();
        term_at(p, &snapshot, &log, index)
    }

    fn entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let p = self.path.as_path();
        let txn = self.begin_read()?;
        let log = txn.open_table(LOG).ctx(p, "open table log")?;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for item in log.range(lo..hi.max(lo)).ctx(p, "scan table log")? {
            let (k, v) = item.ctx(p, "scan table log")?;
            let size = codec::stored_size(v.value());
            if let Some(max) = max_bytes
                && !out.is_empty()
                && bytes + size > max
            {
                break;
            }
            bytes += size;
            out.push(codec::decode_entry(p, k.value(), v.value())?);
        }
        Ok(out)
    }

    fn persist(&self, write: LogWrite<'_>) -> Result<LogId, StorageError> {
        if write.is_empty() {
            return Ok(self.log_bounds()?.last);
        }
        let p = self.path.as_path();
        // Sizes and contiguity are checked before a transaction even starts.
        let encoded = plan::encode_entries(write.entries, self.options.max_entry_bytes)?;
        let mut txn = self.begin_write("begin write (persist)", Commit::Frequent)?;
        let mut commit = Commit::Frequent;
        let plan = {
            let meta = txn.open_table(META).ctx(p, "open table meta")?;
            let log = txn.open_table(LOG).ctx(p, "open table log")?;
            let m = read_meta(p, &meta)?;
            let b = bounds(p, &m.snapshot, &log)?;
            // A new term or vote, or a snapshot, is written two-phase: a fall-back from a
            // damaged one-phase commit then never undoes one (docs/storage.md).
            if write.snapshot.is_some() || write.hard_state.is_some_and(|hs| hs != m.hard_state) {
                commit = Commit::Rare;
            }
            plan::plan_persist(
                &write,
                encoded,
                m.hard_state,
                b,
                m.applied.last_applied,
                |i| term_at(p, &m.snapshot, &log, i),
            )?
        };
        if commit == Commit::Rare {
            txn.set_two_phase_commit(true);
        }
        let last = plan.last;
        write_plan(p, &mut txn, plan)?;
        self.commit(txn, commit, "commit (persist)")?;
        Ok(last)
    }

    fn apply(&self, batch: &ApplyBatch) -> Result<(), StorageError> {
        let p = self.path.as_path();
        let commit = if self.options.durable_applies {
            Commit::Frequent
        } else {
            Commit::NonDurable
        };
        let txn = self.begin_write("begin write (apply)", commit)?;
        {
            let mut meta = txn.open_table(META).ctx(p, "open table meta")?;
            let log = txn.open_table(LOG).ctx(p, "open table log")?;
            let m = read_meta(p, &meta)?;
            plan::check_apply(batch, m.applied.last_applied, |i| {
                term_at(p, &m.snapshot, &log, i)
            })?;
            let mut kv = txn.open_table(KV).ctx(p, "open table kv")?;
            for w in &batch.writes {
                let key = (w.namespace.as_str(), w.key.as_slice());
                match &w.value {
                    Some(v) => kv.insert(key, v.as_slice()).ctx(p, "write table kv")?,
                    None => kv.remove(key).ctx(p, "delete from table kv")?,
                };
            }
            let mut sessions = txn.open_table(SESSIONS).ctx(p, "open table sessions")?;
            for (client, session) in &batch.sessions {
                let Some(session) = session else {
                    sessions
                        .remove(*client)
                        .ctx(p, "remove from table sessions")?;
                    continue;
                };
                let bytes = codec::encode(session, || format!("session of client {client}"))?;
                sessions
                    .insert(*client, bytes.as_slice())
                    .ctx(p, "write table sessions")?;
            }
            let mut applied = m.applied;
            applied.last_applied = batch.last_applied;
            if let Some(config) = &batch.config {
                applied.config = config.clone();
            }
            meta_put(p, &mut meta, K_APPLIED, &applied)?;
        }
        self.commit(txn, commit, "commit (apply)")
    }

    fn purge(&self, snapshot: &SnapshotMeta) -> Result<(), StorageError> {
        let p = self.path.as_path();
        let txn = self.begin_write("begin write (purge)", Commit::Rare)?;
        {
            let mut meta = txn.open_table(META).ctx(p, "open table meta")?;
            let mut log = txn.open_table(LOG).ctx(p, "open table log")?;
            let m = read_meta(p, &meta)?;
            let b = bounds(p, &m.snapshot, &log)?;
            if !plan::check_purge(snapshot, b, m.applied.last_applied, |i| {
                term_at(p, &m.snapshot, &log, i)
            })? {
                return Ok(());
            }
            log.retain_in(..=snapshot.index, |_, _| false)
                .ctx(p, "purge table log")?;
            meta_put(p, &mut meta, K_SNAPSHOT, snapshot)?;
        }
        self.commit(txn, Commit::Rare, "commit (purge)")
    }

    fn sync(&self) -> Result<(), StorageError> {
        // An empty durable commit makes every earlier non-durable one durable; two-phase, it
        // also seals the one-phase commits before it.
        let txn = self.begin_write("begin write (sync)", Commit::Rare)?;
        self.commit(txn, Commit::Rare, "commit (sync)")
    }

    fn view(&self) -> Result<RedbView, StorageError> {
        let txn = self.begin_read()?;
        let p = self.path.as_path();
        let (applied, kv, sessions) = {
            let meta = txn.open_table(META).ctx(p, "open table meta")?;
            let applied = meta_get(p, &meta, K_APPLIED)?.unwrap_or_default();
            let kv = txn.open_table(KV).ctx(p, "open table kv")?;
            let sessions = txn.open_table(SESSIONS).ctx(p, "open table sessions")?;
            (applied, kv, sessions)
        };
        Ok(RedbView {
            path: Arc::clone(&self.path),
            applied,
            kv,
            sessions,
        })
    }
}

/// Carries out a checked [`PersistPlan`] inside `txn`.
fn write_plan(
    p: &Path,
    txn: &mut WriteTransaction,
    plan: PersistPlan<'_>,
) -> Result<(), StorageError> {
    let PersistPlan {
        hard_state,
        snapshot,
        keep_suffix,
        truncate_from,
        entries,
        last: _,
    } = plan;
    if let Some(image) = snapshot {
        let snap_meta = &image.meta;
        // Replace the state machine wholesale: drop and recreate the tables (cheaper than
        // deleting key by key, and leaves nothing of the old state behind). The image is
        // streamed in, one record at a time; redb spills the transaction's dirty pages past
        // half its cache to the file, so memory stays bounded whatever the state's size. A
        // defect in the image returns here and the dropped transaction undoes it all.
        txn.delete_table(KV).ctx(p, "delete table kv")?;
        txn.delete_table(SESSIONS).ctx(p, "delete table sessions")?;
        let mut kv = txn.open_table(KV).ctx(p, "create table kv")?;
        let mut sessions = txn.open_table(SESSIONS).ctx(p, "create table sessions")?;
        image.read(|rec| {
            match rec {
                ImageRecord::Kv(rec) => {
                    kv.insert(
                        (rec.namespace.as_str(), rec.key.as_slice()),
                        rec.value.as_slice(),
                    )
                    .ctx(p, "write table kv")?;
                }
                ImageRecord::Session(client, session) => {
                    let bytes = codec::encode(&session, || format!("session of client {client}"))?;
                    sessions
                        .insert(client, bytes.as_slice())
                        .ctx(p, "write table sessions")?;
                }
            }
            Ok(())
        })?;
        let mut log = txn.open_table(LOG).ctx(p, "open table log")?;
        if keep_suffix {
            log.retain_in(..=snap_meta.index, |_, _| false)
                .ctx(p, "purge table log")?;
        } else {
            log.retain(|_, _| false).ctx(p, "clear table log")?;
        }
        let mut meta = txn.open_table(META).ctx(p, "open table meta")?;
        let applied = AppliedState {
            last_applied: LogId {
                index: snap_meta.index,
                term: snap_meta.term,
            },
            config: snap_meta.config.clone(),
        };
        meta_put(p, &mut meta, K_APPLIED, &applied)?;
        meta_put(p, &mut meta, K_SNAPSHOT, snap_meta)?;
    }
    let mut meta = txn.open_table(META).ctx(p, "open table meta")?;
    if let Some(hs) = hard_state {
        meta_put(p, &mut meta, K_HARD_STATE, &hs)?;
    }
    let mut log = txn.open_table(LOG).ctx(p, "open table log")?;
    if let Some(from) = truncate_from {
        log.retain_in(from.., |_, _| false)
            .ctx(p, "truncate table log")?;
    }
    for (index, bytes) in &entries {
        log.insert(*index, bytes.as_slice())
            .ctx(p, "append to table log")?;
    }
    Ok(())
}

/// A read view of a [`RedbStorage`]: a redb read transaction, so a point in time that later
/// commits do not disturb and that does not block them.
pub struct RedbView {
    path: Arc<PathBuf>,
    applied: AppliedState,
    kv: ReadOnlyTable<(&'static str, &'static [u8]), &'static [u8]>,
    sessions: ReadOnlyTable<u64, &'static [u8]>,
}

impl fmt::Debug for RedbView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbView")
            .field("path", &self.path)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl RedbView {
    fn decode_session(&self, client: u64, bytes: &[u8]) -> Result<Session, StorageError> {
        codec::decode(&self.path, || format!("session of client {client}"), bytes)
    }
}

impl StateView for RedbView {
    fn applied(&self) -> &AppliedState {
        &self.applied
    }

    fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let v = self
            .kv
            .get((namespace, key))
            .ctx(&self.path, "read table kv")?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn range(&self, namespace: &str, range: KvRange<'_>) -> Result<KvPairs, StorageError> {
        let mut out = Vec::new();
        for item in self
            .kv
            .range((namespace, range.first_key())..)
            .ctx(&self.path, "scan table kv")?
        {
            if out.len() >= range.limit {
                break;
            }
            let (k, v) = item.ctx(&self.path, "scan table kv")?;
            let (ns, key) = k.value();
            if ns != namespace || !range.admits(key) {
                break;
            }
            out.push((key.to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn session(&self, client_id: u64) -> Result<Option<Session>, StorageError> {
        match self
            .sessions
            .get(client_id)
            .ctx(&self.path, "read table sessions")?
        {
            Some(g) => self.decode_session(client_id, g.value()).map(Some),
            None => Ok(None),
        }
    }

    fn namespaces(&self) -> Result<Vec<(String, u64)>, StorageError> {
        // One pass over the table: fine for the inspector, the only caller that needs counts.
        let mut out: Vec<(String, u64)> = Vec::new();
        for item in self.kv.iter().ctx(&self.path, "scan table kv")? {
            let (k, _) = item.ctx(&self.path, "scan table kv")?;
            let (ns, _) = k.value();
            match out.last_mut() {
                Some((name, count)) if name == ns => *count += 1,
                _ => out.push((ns.to_string(), 1)),
            }
        }
        Ok(out)
    }

    fn scan_kv(
        &self,
        after: Option<(&str, &[u8])>,
        limit: usize,
    ) -> Result<Vec<KvRecord>, StorageError> {
        let mut out = Vec::new();
        let iter = match after {
            None => self.kv.iter().ctx(&self.path, "scan table kv")?,
            Some(a) => self.kv.range(a..).ctx(&self.path, "scan table kv")?,
        };
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.ctx(&self.path, "scan table kv")?;
            let (ns, key) = k.value();
            if after == Some((ns, key)) {
                continue;
            }
            out.push(KvRecord {
                namespace: ns.to_string(),
                key: key.to_vec(),
                value: v.value().to_vec(),
            });
        }
        Ok(out)
    }

    fn scan_sessions(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Session)>, StorageError> {
        let mut out = Vec::new();
        let iter = match after {
            None => self
                .sessions
                .iter()
                .ctx(&self.path, "scan table sessions")?,
            Some(a) => self
                .sessions
                .range(a.saturating_add(1)..)
                .ctx(&self.path, "scan table sessions")?,
        };
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.ctx(&self.path, "scan table sessions")?;
            let id = k.value();
            if after.is_some_and(|a| id <= a) {
                continue;
            }
            out.push((id, self.decode_session(id, v.value())?));
        }
        Ok(out)
    }
}
