//! The search index of published APIs (tantivy, the classic "Solr" index),
//! persisted under `<data-dir>/search-index` (the per-pod volume). It
//! records the snapshot revision it was built from: a restart on the same
//! artifacts reuses it as is; a missing, broken or stale index is rebuilt
//! from the artifacts. A new revision re-indexes only the APIs whose
//! indexed text changed (each document keeps a digest of it), so a reload
//! that touches one API of 10,000 writes one document, not 10,000.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, STORED, STRING, Schema, TEXT, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term, doc};

const REVISION_FILE: &str = "tollgate-revision";

struct Fields {
    id: Field,
    name: Field,
    description: Field,
    tags: Field,
    context: Field,
    operations: Field,
    /// Digest of everything indexed for the API ([`IndexedApi::digest`]).
    digest: Field,
}

pub struct SearchIndex {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    /// None once a failed commit could not be rolled back either (the
    /// writer is then unusable; searches still read what was committed).
    writer: Mutex<Option<IndexWriter>>,
    fields: Fields,
    revision: Mutex<String>,
    /// The digest of each API's document in the index, by API id.
    indexed: Mutex<HashMap<String, String>>,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        name: b.add_text_field("name", TEXT),
        description: b.add_text_field("description", TEXT),
        tags: b.add_text_field("tags", TEXT),
        context: b.add_text_field("context", TEXT),
        operations: b.add_text_field("operations", TEXT),
        digest: b.add_text_field("digest", STRING | STORED),
    };
    (b.build(), fields)
}

impl SearchIndex {
    /// Opens the index in `dir`, or creates it; an unreadable index is
    /// removed and created again (it is derived data).
    pub fn open(dir: &Path) -> anyhow::Result<SearchIndex> {
        std::fs::create_dir_all(dir)?;
        match Self::open_inner(dir) {
            Ok(i) => Ok(i),
            // Held by another process (two gateways given one --data-dir):
            // its index is not ours to remove.
            Err(e)
                if e.downcast_ref::<tantivy::TantivyError>().is_some_and(|t| {
                    matches!(t, tantivy::TantivyError::LockFailure(tantivy::directory::error::LockError::LockBusy, _))
                }) =>
            {
                anyhow::bail!(
                    "{} is in use by another process: each gateway needs a --data-dir of its own",
                    dir.display()
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "search index unreadable; rebuilding it");
                std::fs::remove_dir_all(dir)?;
                std::fs::create_dir_all(dir)?;
                Self::open_inner(dir)
            }
        }
    }

    fn open_inner(dir: &Path) -> anyhow::Result<SearchIndex> {
        let (schema, fields) = schema();
        let mmap = tantivy::directory::MmapDirectory::open(dir)?;
        let index = Index::open_or_create(mmap, schema)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writer = index.writer_with_num_threads(1, 15_000_000)?;
        let revision = std::fs::read_to_string(dir.join(REVISION_FILE)).unwrap_or_default().trim().to_string();
        let indexed = Self::read_digests(&reader, &fields)?;
        Ok(SearchIndex {
            dir: dir.to_path_buf(),
            index,
            reader,
            writer: Mutex::new(Some(writer)),
            fields,
            revision: Mutex::new(revision),
            indexed: Mutex::new(indexed),
        })
    }

    /// The id and digest of every document in the index.
    fn read_digests(reader: &IndexReader, f: &Fields) -> anyhow::Result<HashMap<String, String>> {
        let searcher = reader.searcher();
        let mut out = HashMap::new();
        for segment in searcher.segment_readers() {
            let store = segment.get_store_reader(16)?;
            for id in segment.doc_ids_alive() {
                let d: TantivyDocument = store.get(id)?;
                let text = |field| d.get_first(field).and_then(|v| v.as_str()).map(str::to_string);
                if let (Some(api), Some(digest)) = (text(f.id), text(f.digest)) {
                    out.insert(api, digest);
                }
            }
        }
        Ok(out)
    }

    /// The snapshot revision the index holds.
    pub fn revision(&self) -> String {
        self.revision.lock().clone()
    }

    /// Brings the index to the published APIs of snapshot `revision`
    /// unless it already holds that revision: documents of APIs that are
    /// gone or whose indexed text changed are deleted, new and changed ones
    /// added. Returns how many documents were written or deleted (None when
    /// the revision was already held).
    pub fn sync(&self, revision: &str, apis: &[IndexedApi]) -> anyhow::Result<Option<usize>> {
        if *self.revision.lock() == revision {
            return Ok(None);
        }
        let f = &self.fields;
        let wanted: HashMap<&str, (String, &IndexedApi)> =
            apis.iter().map(|a| (String::as_str(&a.id), (a.digest(), a))).collect();
        let mut indexed = self.indexed.lock();
        let gone: Vec<String> = indexed
            .iter()
            .filter(|(id, digest)| wanted.get(String::as_str(id)).is_none_or(|(d, _)| d != *digest))
            .map(|(id, _)| id.clone())
            .collect();
        let new: Vec<(&String, &IndexedApi)> = wanted
            .values()
            .filter(|(digest, a)| indexed.get(&a.id) != Some(digest))
            .map(|(digest, a)| (digest, *a))
            .collect();
        let changes = gone.len() + new.len();
        if changes > 0 {
            let mut guard = self.writer.lock();
            let Some(w) = guard.as_mut() else {
                anyhow::bail!(
                    "the search index writer failed earlier and was dropped; restart the gateway to rebuild it"
                );
            };
            let done = (|| -> anyhow::Result<()> {
                for id in &gone {
                    w.delete_term(Term::from_field_text(f.id, id));
                }
                for (digest, a) in &new {
                    w.add_document(doc!(
                        f.id => a.id.clone(),
                        f.name => a.name.clone(),
                        f.description => a.description.clone(),
                        f.tags => a.tags.join(" "),
                        f.context => format!("{} {}", a.context, a.context.replace('/', " ")),
                        f.operations => a.operations.join(" ").replace('/', " "),
                        f.digest => (*digest).clone(),
                    ))?;
                }
                w.commit()?;
                Ok(())
            })();
            if let Err(e) = done {
                // What was staged is dropped; the next sync starts over from
                // what the index holds. A writer that cannot roll back is
                // unusable (tantivy would panic on its next rollback).
                if let Err(r) = w.rollback() {
                    *guard = None;
                    return Err(e.context(format!("and the rollback failed too ({r}); the index is read-only now")));
                }
                return Err(e);
            }
            self.reader.reload()?;
            for id in &gone {
                indexed.remove(id);
            }
            for (digest, a) in new {
                indexed.insert(a.id.clone(), digest.clone());
            }
        }
        write_atomic(&self.dir.join(REVISION_FILE), revision.as_bytes())?;
        *self.revision.lock() = revision.to_string();
        Ok(Some(changes))
    }

    /// API ids matching `q`, best first (lenient: any text is a valid query).
    pub fn search(&self, q: &str, limit: usize) -> anyhow::Result<Vec<String>> {
        let f = &self.fields;
        let mut parser =
            QueryParser::for_index(&self.index, vec![f.name, f.description, f.tags, f.context, f.operations]);
        parser.set_conjunction_by_default();
        let (query, _errors) = parser.parse_query_lenient(q);
        let searcher = self.reader.searcher();
        let hits = searcher.search(&query, &TopDocs::with_limit(limit.max(1)).order_by_score())?;
        let mut ids = Vec::with_capacity(hits.len());
        for (_, addr) in hits {
            let d: TantivyDocument = searcher.doc(addr)?;
            if let Some(id) = d.get_first(f.id).and_then(|v| v.as_str()) {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }
}

/// What the index holds of one published API.
#[derive(Clone, Debug, Default)]
pub struct IndexedApi {
    /// `namespace/name`.
    pub id: String,
    /// Display name, else the object name.
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub context: String,
    /// `METHOD /path` of each operation.
    pub operations: Vec<String>,
}

impl IndexedApi {
    /// SHA-256 (hex) of everything indexed for the API: a document whose
    /// digest is unchanged is kept as it is.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // Each part length-prefixed, so no two different APIs hash alike.
        let mut part = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        part(&self.id);
        part(&self.name);
        part(&self.description);
        part(&self.context);
        part(&self.tags.len().to_string());
        for t in &self.tags {
            part(t);
        }
        part(&self.operations.len().to_string());
        for o in &self.operations {
            part(o);
        }
        hex::encode(h.finalize())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(id: &str, description: &str) -> IndexedApi {
        IndexedApi {
            id: id.into(),
            name: id.rsplit('/').next().unwrap().into(),
            description: description.into(),
            tags: vec!["banking".into()],
            context: format!("/{}", id.replace('/', "-")),
            operations: vec!["GET /accounts".into()],
        }
    }

    fn found(index: &SearchIndex, q: &str) -> Vec<String> {
        let mut ids = index.search(q, 100).unwrap();
        ids.sort();
        ids
    }

    #[test]
    fn only_changed_apis_are_written_and_a_reopened_index_knows_what_it_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("search-index");
        let index = SearchIndex::open(&dir).unwrap();
        let mut apis: Vec<IndexedApi> =
            (0..50).map(|i| api(&format!("ns/api-{i}"), if i % 2 == 0 { "payments" } else { "cards" })).collect();
        assert_eq!(index.sync("r1", &apis).unwrap(), Some(50));
        assert_eq!(index.sync("r1", &apis).unwrap(), None, "the revision it holds");
        assert_eq!(found(&index, "payments").len(), 25);

        // One description changes, one API goes, one comes: three APIs'
        // documents change (the changed one is deleted and added).
        apis[1].description = "payments too".into();
        apis.retain(|a| a.id != "ns/api-2");
        apis.push(api("ns/api-new", "payments"));
        assert_eq!(index.sync("r2", &apis).unwrap(), Some(4));
        let hits = found(&index, "payments");
        assert_eq!(hits.len(), 26, "{hits:?}");
        assert!(hits.contains(&"ns/api-1".to_string()) && hits.contains(&"ns/api-new".to_string()));
        assert!(!hits.contains(&"ns/api-2".to_string()));
        assert_eq!(found(&index, "cards").len(), 24, "the changed API is no longer found by its old text");

        // A new revision with the same text writes nothing.
        assert_eq!(index.sync("r3", &apis).unwrap(), Some(0));
        drop(index);

        // Reopened: the revision and every document's digest are read back.
        let index = SearchIndex::open(&dir).unwrap();
        assert_eq!(index.revision(), "r3");
        assert_eq!(index.sync("r4", &apis).unwrap(), Some(0));
        apis[0].tags.push("open-banking".into());
        assert_eq!(index.sync("r5", &apis).unwrap(), Some(2));
        assert_eq!(found(&index, "payments").len(), 26);
    }

    #[test]
    fn an_index_another_process_holds_is_refused_never_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("search-index");
        let first = SearchIndex::open(&dir).unwrap();
        assert_eq!(first.sync("r1", &[api("ns/a", "payments")]).unwrap(), Some(1));
        let e = SearchIndex::open(&dir).err().expect("the writer lock is held");
        assert!(e.to_string().contains("in use by another process"), "{e}");
        // The holder's index is intact and still written.
        assert_eq!(found(&first, "payments"), ["ns/a"]);
        assert_eq!(first.sync("r2", &[api("ns/a", "payments"), api("ns/b", "ledgers")]).unwrap(), Some(1));
        assert_eq!(found(&first, "ledgers"), ["ns/b"]);
    }

    #[test]
    fn an_index_of_an_older_layout_is_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("search-index");
        {
            // The layout before documents kept a digest.
            let mut b = Schema::builder();
            let id = b.add_text_field("id", STRING | STORED);
            let mmap = tantivy::directory::MmapDirectory::open({
                std::fs::create_dir_all(&dir).unwrap();
                &dir
            })
            .unwrap();
            let old = Index::open_or_create(mmap, b.build()).unwrap();
            let mut w: IndexWriter = old.writer_with_num_threads(1, 15_000_000).unwrap();
            w.add_document(doc!(id => "ns/old")).unwrap();
            w.commit().unwrap();
        }
        let index = SearchIndex::open(&dir).unwrap();
        assert_eq!(index.sync("r1", &[api("ns/a", "payments")]).unwrap(), Some(1));
        assert_eq!(found(&index, "payments"), ["ns/a"]);
    }

    #[test]
    fn digests_tell_every_indexed_part_apart() {
        let a = api("ns/a", "x");
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(a.digest()));
        let mut b = a.clone();
        b.tags = vec!["bank".into(), "ing".into()];
        assert!(seen.insert(b.digest()));
        let mut b = a.clone();
        b.operations.push("POST /payments".into());
        assert!(seen.insert(b.digest()));
        let mut b = a.clone();
        b.name = "other".into();
        assert!(seen.insert(b.digest()));
        let mut b = a.clone();
        b.context = "/other".into();
        assert!(seen.insert(b.digest()));
        assert_eq!(a.digest(), a.clone().digest());
    }
}
