//! The search index of published APIs (tantivy, the classic "Solr" index),
//! persisted under `<data-dir>/search-index` (the per-pod volume). It
//! records the snapshot revision it was built from: a restart on the same
//! artifacts reuses it as is; a missing, broken or stale index is rebuilt
//! from the artifacts.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, STORED, STRING, Schema, TEXT, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, doc};

const REVISION_FILE: &str = "tollgate-revision";

struct Fields {
    id: Field,
    name: Field,
    description: Field,
    tags: Field,
    context: Field,
    operations: Field,
}

pub struct SearchIndex {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    revision: Mutex<String>,
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
        Ok(SearchIndex {
            dir: dir.to_path_buf(),
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            revision: Mutex::new(revision),
        })
    }

    /// The snapshot revision the index holds.
    pub fn revision(&self) -> String {
        self.revision.lock().clone()
    }

    /// Rebuilds the index from the published APIs of snapshot `revision`
    /// unless it already holds that revision. Returns whether it rebuilt.
    pub fn sync(&self, revision: &str, apis: &[IndexedApi]) -> anyhow::Result<bool> {
        if *self.revision.lock() == revision {
            return Ok(false);
        }
        let f = &self.fields;
        let mut w = self.writer.lock();
        w.delete_all_documents()?;
        for a in apis {
            w.add_document(doc!(
                f.id => a.id.clone(),
                f.name => a.name.clone(),
                f.description => a.description.clone(),
                f.tags => a.tags.join(" "),
                f.context => format!("{} {}", a.context, a.context.replace('/', " ")),
                f.operations => a.operations.join(" ").replace('/', " "),
            ))?;
        }
        w.commit()?;
        self.reader.reload()?;
        write_atomic(&self.dir.join(REVISION_FILE), revision.as_bytes())?;
        *self.revision.lock() = revision.to_string();
        Ok(true)
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

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
