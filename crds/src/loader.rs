//! Reads folders of multi-document YAML manifests into typed Tollgate
//! resources, shared by the operator and the gateway.
//!
//! - Folders are read recursively in a stable (sorted) order; only `.yaml`,
//!   `.yml` and `.json` files are read, and names that look like files being
//!   written (hidden names, `~`, `.tmp`, `.swp`, `.part`) are skipped, so an
//!   atomic writer (temp file + rename) is never read half-way.
//! - Documents of other kinds (Deployments, ConfigMaps, ...) are ignored, so a
//!   folder of mixed manifests works.
//! - Every Tollgate document is checked against its CRD schema and CEL rules
//!   (see [`crate::validate`]); errors name the file, the document (1-based)
//!   and the field path.
//! - Objects without `metadata.namespace` are placed in `default`, as
//!   `kubectl apply` would with the default context.

use foldhash::{HashMap, HashMapExt};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::resource::{ObjectRef, Resource};
use crate::validate::{FieldError, validate_object};

/// Largest manifest file read; bigger files are reported, not parsed.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Deepest folder nesting followed.
const MAX_DEPTH: usize = 16;
/// Namespace given to objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Where a document came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    /// The file, as found under the folder that was loaded.
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file (empty documents
    /// are not counted).
    pub document: usize,
    /// 1-based line where the document starts (0 when unknown).
    pub line: u64,
}

/// A valid resource and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub source: Source,
    pub resource: Resource,
}

/// Why a file or a document could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// 1-based document index; `None` when the whole file failed.
    pub document: Option<usize>,
    /// 1-based line where the document starts (0 when unknown).
    pub line: u64,
    /// The object, when its kind and name could be read.
    pub object: Option<ObjectRef>,
    /// Dotted field path, when one field is at fault.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl LoadError {
    /// An error about a whole file or folder (no document, object or field).
    pub fn whole_file(file: &Path, message: String) -> LoadError {
        LoadError { file: file.to_path_buf(), document: None, line: 0, object: None, field: None, message }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
            if self.line > 0 {
                write!(f, " (line {})", self.line)?;
            }
        }
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(p) = &self.field {
            write!(f, ": {p}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for LoadError {}

/// Everything found in a folder: the valid resources and the errors, file by
/// file. One bad document never hides the good ones next to it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub resources: Vec<Loaded>,
    pub errors: Vec<LoadError>,
    /// Every manifest file that was read (valid or not).
    pub files: Vec<PathBuf>,
}

impl LoadReport {
    /// The resources of one kind.
    pub fn api_deployments(&self) -> impl Iterator<Item = &crate::ApiDeployment> {
        self.resources.iter().filter_map(|l| match &l.resource {
            Resource::ApiDeployment(r) => Some(r.as_ref()),
            _ => None,
        })
    }

    /// The ThrottlePolicies found.
    pub fn throttle_policies(&self) -> impl Iterator<Item = &crate::ThrottlePolicy> {
        self.resources.iter().filter_map(|l| match &l.resource {
            Resource::ThrottlePolicy(r) => Some(r.as_ref()),
            _ => None,
        })
    }

    /// The KeyManagers found.
    pub fn key_managers(&self) -> impl Iterator<Item = &crate::KeyManager> {
        self.resources.iter().filter_map(|l| match &l.resource {
            Resource::KeyManager(r) => Some(r.as_ref()),
            _ => None,
        })
    }

    /// The ApiManagers found.
    pub fn api_managers(&self) -> impl Iterator<Item = &crate::ApiManager> {
        self.resources.iter().filter_map(|l| match &l.resource {
            Resource::ApiManager(r) => Some(r.as_ref()),
            _ => None,
        })
    }
}

/// Whether a file name is a manifest to read (and not a file being written).
pub fn is_manifest_name(name: &str) -> bool {
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// Loads every manifest under `dir` (recursively). Fails only when `dir`
/// itself cannot be read; problems with files and documents are in the report.
pub fn load_dir(dir: &Path) -> Result<LoadReport, Box<LoadError>> {
    load_dir_cached(dir, &mut FileCache::default())
}

/// Parsed files kept between loads of one folder, so that a reload parses
/// and validates only the files that changed. A file counts as unchanged
/// while its device, inode, size, mtime and ctime all stay the same (an
/// atomic rename gives a new inode; any write changes mtime and ctime).
/// File times have coarse ticks, so two writes in one tick could look the
/// same: a file changed within the last second when it was read is read
/// again on the next load and its parse reused only when the content has
/// the same SHA-256 digest.
#[derive(Debug, Default)]
pub struct FileCache {
    files: HashMap<PathBuf, CachedFile>,
    parsed: usize,
}

#[derive(Debug)]
struct CachedFile {
    stamp: FileStamp,
    /// The content's digest while the file was young when read: the stamp
    /// alone does not vouch for it.
    digest: Option<Digest>,
    loaded: Vec<Loaded>,
    errors: Vec<LoadError>,
}

type Digest = [u8; 32];

/// What identifies one version of a file: device, inode, size, mtime and
/// ctime (a same-size copy renamed into place that kept its mtime still has
/// another inode and ctime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// Files whose times are this recent when read are read again on the next
/// load (and parsed again if their content changed).
const SETTLED_NS: i128 = 1_000_000_000;

/// Whether a file whose times say `changed_ns` was changed within
/// `window_ns` before `now_ns`. A time ahead of `now_ns` by less than the
/// window counts as recent (a writer whose clock is a little ahead); one
/// further ahead does not: that is a clock far off (another node's), not a
/// write in progress, and waiting for it to settle would wait until that
/// clock is reached, on every load.
pub fn recently_changed(changed_ns: i128, now_ns: i128, window_ns: i128) -> bool {
    let age = now_ns - changed_ns;
    age < window_ns && age > -window_ns
}

/// Nanoseconds since the epoch now.
pub fn now_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

impl FileStamp {
    fn settled(&self) -> bool {
        !recently_changed(self.changed_ns(), now_ns(), SETTLED_NS)
    }

    /// Nanoseconds since the epoch of the last change to the file or its
    /// metadata.
    pub fn changed_ns(&self) -> i128 {
        self.mtime_ns.max(self.ctime_ns)
    }

    /// The stamp of a file's metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

impl FileCache {
    /// Number of files remembered.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// How many files the last load parsed (the rest were reused).
    pub fn last_parsed(&self) -> usize {
        self.parsed
    }

    /// How many files were young when read and await a second look.
    pub fn young(&self) -> usize {
        self.files.values().filter(|c| c.digest.is_some()).count()
    }

    /// When (nanoseconds since the epoch) the last of the files that were
    /// young when read has settled; None when no file awaits a second look.
    pub fn young_until(&self) -> Option<i128> {
        self.files.values().filter(|c| c.digest.is_some()).map(|c| c.stamp.changed_ns() + SETTLED_NS).max()
    }

    /// Takes the second look at the files that were young when read and
    /// have settled since: each is stat'ed and read again. A file whose
    /// stamp and content are both unchanged is remembered as settled from
    /// now on, so no later load reads it again. Returns false when any of
    /// them changed (or vanished): a load is due, and will find the change
    /// by the digest it still remembers.
    ///
    /// Without this second look a file rewritten within its first tick
    /// after being read would look unchanged to a listing, and a reload
    /// soon after startup would read every file again.
    pub fn verify_settled(&mut self) -> bool {
        use sha2::Digest as _;
        let due: Vec<(&PathBuf, FileStamp, Digest)> = self
            .files
            .iter()
            .filter_map(|(f, c)| Some((f, c.stamp, c.digest?)))
            .filter(|(_, stamp, _)| stamp.settled())
            .collect();
        let same = |&(file, stamp, digest): &(&PathBuf, FileStamp, Digest)| {
            let now = std::fs::metadata(file).ok().map(|m| FileStamp::of(&m));
            now == Some(stamp)
                && read_limited(file).is_ok_and(|text| sha2::Sha256::digest(text.as_bytes())[..] == digest[..])
        };
        let verdicts = in_parallel(&due, same);
        if verdicts.iter().any(|same| !same) {
            return false;
        }
        let settled: Vec<PathBuf> = due.into_iter().map(|(f, _, _)| f.clone()).collect();
        for f in settled {
            if let Some(c) = self.files.get_mut(&f) {
                c.digest = None;
            }
        }
        true
    }
}

/// [`load_dir`] that reuses the parse results of unchanged files from
/// `cache` and leaves the results of this load in it (files that are gone
/// are forgotten).
pub fn load_dir_cached(dir: &Path, cache: &mut FileCache) -> Result<LoadReport, Box<LoadError>> {
    let listing = list_dir(dir)?;
    Ok(load_listing_cached(listing, cache))
}

/// The manifest files of a folder, each with the stamp it had when listed
/// (`None`: it vanished meanwhile), and the folders that could not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub files: Vec<(PathBuf, Option<FileStamp>)>,
    pub errors: Vec<LoadError>,
}

/// Lists a folder's manifests with their stamps: one walk and one stat per
/// file, which a reload compares with the last listing and then loads.
/// Fails only when `dir` itself cannot be read.
pub fn list_dir(dir: &Path) -> Result<Listing, Box<LoadError>> {
    let folder_error = |message: String| Box::new(LoadError::whole_file(dir, message));
    let meta = std::fs::metadata(dir).map_err(|e| folder_error(format!("cannot read folder: {e}")))?;
    if !meta.is_dir() {
        return Err(folder_error("not a folder".into()));
    }
    let (files, errors) = manifest_files(dir);
    // The stamp is taken before reading: a write racing the read gives a
    // newer stamp, so the next load reads the file again.
    let files = files
        .into_iter()
        .map(|f| {
            let stamp = std::fs::metadata(&f).ok().map(|m| FileStamp::of(&m));
            (f, stamp)
        })
        .collect();
    Ok(Listing { files, errors })
}

/// Loads the files of a [`Listing`], reusing the parse results of files
/// whose stamp is unchanged from `cache` and leaving this load's in it.
pub fn load_listing_cached(listing: Listing, cache: &mut FileCache) -> LoadReport {
    let mut report = LoadReport { errors: listing.errors, ..LoadReport::default() };
    // Files not remembered (and young ones, whose content decides) are read
    // and, unless unchanged, parsed and checked on every core (startup reads
    // them all); the rest come from the cache.
    let stamps: Vec<(PathBuf, Option<FileStamp>, Option<CachedFile>)> = listing
        .files
        .into_iter()
        .map(|(file, stamp)| {
            let cached = cache.files.remove(&file).filter(|c| stamp.is_some() && Some(c.stamp) == stamp);
            (file, stamp, cached)
        })
        .collect();
    let to_read: Vec<(usize, &Path, Option<Digest>)> = stamps
        .iter()
        .enumerate()
        .filter(|(_, (_, _, c))| c.as_ref().is_none_or(|c| c.digest.is_some()))
        .map(|(i, (f, _, c))| (i, f.as_path(), c.as_ref().and_then(|c| c.digest)))
        .collect();
    let mut read: HashMap<usize, ReadFile> = read_files(&to_read);
    cache.parsed = 0;
    let mut next = HashMap::with_capacity(stamps.len());
    for (i, (file, stamp, cached)) in stamps.into_iter().enumerate() {
        let entry = match (cached, read.remove(&i)) {
            (Some(c), None) => c,
            (Some(c), Some(ReadFile::Same)) => {
                // Young when read and still the same content.
                let settled = c.stamp.settled();
                CachedFile { digest: c.digest.filter(|_| !settled), ..c }
            }
            (_, read) => {
                cache.parsed += 1;
                let (loaded, errors, digest) = match read {
                    Some(ReadFile::Parsed { loaded, errors, digest }) => (loaded, errors, digest),
                    _ => (Vec::new(), Vec::new(), None),
                };
                match (stamp, digest) {
                    (Some(stamp), Some(digest)) => {
                        CachedFile { stamp, digest: (!stamp.settled()).then_some(digest), loaded, errors }
                    }
                    _ => {
                        // Vanished or unreadable: report, remember nothing.
                        report.resources.extend(loaded);
                        report.errors.extend(errors);
                        report.files.push(file);
                        continue;
                    }
                }
            }
        };
        report.resources.extend(entry.loaded.iter().cloned());
        report.errors.extend(entry.errors.iter().cloned());
        report.files.push(file.clone());
        next.insert(file, entry);
    }
    cache.files = next;
    reject_duplicates(&mut report);
    report
}

/// One file read for a load.
enum ReadFile {
    /// The same content as the digest it was read with.
    Same,
    /// Parsed and checked; `digest` is `None` when the file could not be read.
    Parsed { loaded: Vec<Loaded>, errors: Vec<LoadError>, digest: Option<Digest> },
}

/// Reads `files` (index, path, the digest of the content already parsed if
/// any) and parses and checks those that changed, split over the available
/// cores when there are many.
fn read_files(files: &[(usize, &Path, Option<Digest>)]) -> HashMap<usize, ReadFile> {
    use sha2::Digest as _;
    let one = |&(i, file, known): &(usize, &Path, Option<Digest>)| {
        let result = match read_limited(file) {
            Ok(text) => {
                let digest: Digest = sha2::Sha256::digest(text.as_bytes()).into();
                if known == Some(digest) {
                    ReadFile::Same
                } else {
                    let (loaded, errors) = load_str(file, &text);
                    ReadFile::Parsed { loaded, errors, digest: Some(digest) }
                }
            }
            Err(message) => ReadFile::Parsed {
                loaded: Vec::new(),
                errors: vec![LoadError::whole_file(file, message)],
                digest: None,
            },
        };
        (i, result)
    };
    in_parallel(files, one).into_iter().collect()
}

/// `items` mapped by `f`, in order, split over the available cores (up to
/// eight) when there are many.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads < 2 || items.len() < 64 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> =
            items.chunks(chunk).map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<_>>())).collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

fn read_limited(file: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read file: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("file is {} bytes, larger than the {} byte limit", meta.len(), MAX_FILE_BYTES));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read file: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("file is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

/// The manifest files `load_dir` would read, in the same order, with the
/// folders it could not read as errors.
pub fn manifest_files(dir: &Path) -> (Vec<PathBuf>, Vec<LoadError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let folder_error = LoadError::whole_file;
    // Depth-first in file-name order; hidden names (and ConfigMap volumes'
    // `..data` folders) are skipped, symlinks followed (a ConfigMap volume
    // links every key into `..data/`); the entry type comes with the folder
    // listing, so only symlinks cost a stat. Symlink loops are detected.
    // (Sorted once at the end: comparing walkdir entries re-parses their
    // paths at every comparison.)
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .max_depth(MAX_DEPTH + 1)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || e.file_name().to_str().is_some_and(|n| !n.starts_with('.')));
    for entry in walker {
        match entry {
            Ok(e) => {
                let is_manifest = e.file_name().to_str().is_some_and(is_manifest_name);
                if e.depth() > 0 && e.file_type().is_file() && is_manifest {
                    files.push(e.into_path());
                }
            }
            // A folder that cannot be listed is reported; a dangling
            // symlink or a loop holds no manifest and is passed over.
            Err(e) => match (e.path(), e.io_error()) {
                (Some(p), Some(io)) if p.is_dir() || e.depth() == 0 => {
                    errors.push(folder_error(p, format!("cannot read folder: {io}")));
                }
                _ => {}
            },
        }
    }
    // File-name order at every level: the order of a depth-first walk
    // that lists each folder sorted by name.
    files.sort_by_cached_key(|p| {
        p.strip_prefix(dir).unwrap_or(p).components().map(|c| c.as_os_str().to_owned()).collect::<Vec<_>>()
    });
    (files, errors)
}

/// Loads the documents of one file's text. `file` only labels errors.
pub fn load_str(file: &Path, text: &str) -> (Vec<Loaded>, Vec<LoadError>) {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    let is_json = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let docs: Result<Vec<(Value, u64)>, String> = if is_json {
        serde_json::from_str::<Value>(text).map(|v| vec![(v, 1)]).map_err(|e| format!("invalid JSON: {e}"))
    } else {
        serde_saphyr::from_multiple::<serde_saphyr::Spanned<Value>>(text)
            .map(|docs| docs.into_iter().map(|d| (d.value, d.referenced.line())).collect())
            .map_err(|e| format!("invalid YAML: {e}"))
    };
    let docs = match docs {
        Ok(d) => d,
        Err(message) => {
            errors.push(LoadError::whole_file(file, message));
            return (loaded, errors);
        }
    };
    for (i, (doc, line)) in docs.into_iter().enumerate() {
        let document = i + 1;
        match parse_document(doc) {
            Ok(None) => {}
            Ok(Some(resource)) => {
                loaded.push(Loaded { source: Source { file: file.to_path_buf(), document, line }, resource })
            }
            Err((object, field_errors)) => {
                for fe in field_errors {
                    errors.push(LoadError {
                        file: file.to_path_buf(),
                        document: Some(document),
                        line,
                        object: object.clone(),
                        field: (!fe.path.is_empty()).then_some(fe.path),
                        message: fe.message,
                    });
                }
            }
        }
    }
    (loaded, errors)
}

type DocError = (Option<ObjectRef>, Vec<FieldError>);

fn fe(path: &str, message: impl Into<String>) -> Vec<FieldError> {
    vec![FieldError { path: path.into(), message: message.into() }]
}

/// Parses one document. `Ok(None)` for empty documents and kinds Tollgate
/// does not own.
pub fn parse_document(mut doc: Value) -> Result<Option<Resource>, DocError> {
    if doc.is_null() {
        return Ok(None);
    }
    let Some(map) = doc.as_object() else {
        return Err((None, fe("", format!("document is a {}, not a mapping with apiVersion and kind", kind_of(&doc)))));
    };
    let api_version = match map.get("apiVersion") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err((None, fe("apiVersion", "must be a string"))),
        None => return Err((None, fe("apiVersion", "Required value"))),
    };
    let kind = match map.get("kind") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err((None, fe("kind", "must be a string"))),
        None => return Err((None, fe("kind", "Required value"))),
    };
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    if group != crate::GROUP {
        return Ok(None);
    }
    if !matches!(kind.as_str(), "ApiManager" | "ApiDeployment" | "ThrottlePolicy" | "KeyManager") {
        return Err((
            None,
            fe(
                "kind",
                format!(
                    "unknown kind {kind:?} in {}; supported: ApiManager, ApiDeployment, ThrottlePolicy, KeyManager",
                    crate::GROUP
                ),
            ),
        ));
    }
    if api_version != crate::API_VERSION {
        return Err((
            None,
            fe("apiVersion", format!("unsupported version {api_version:?}; expected {:?}", crate::API_VERSION)),
        ));
    }
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    if name.is_empty() {
        return Err((None, fe("metadata.name", "Required value")));
    }
    if let Some(obj) = doc.as_object_mut() {
        let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut()
            && !m.get("namespace").is_some_and(Value::is_string)
        {
            m.insert("namespace".into(), Value::String(DEFAULT_NAMESPACE.into()));
        }
    }
    let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
    let object = ObjectRef { kind: kind.clone(), namespace: namespace.clone(), name: name.clone() };
    let mut meta_errors = Vec::new();
    if !is_dns_subdomain(&name) {
        meta_errors.push(FieldError {
            path: "metadata.name".into(),
            message: format!("Invalid value: {name:?}: must be a lowercase RFC 1123 subdomain (a-z, 0-9, '-', '.'; at most 253 characters)"),
        });
    }
    if !is_dns_label(&namespace) {
        meta_errors.push(FieldError {
            path: "metadata.namespace".into(),
            message: format!("Invalid value: {namespace:?}: must be a lowercase RFC 1123 label"),
        });
    }
    if !meta_errors.is_empty() {
        return Err((Some(object), meta_errors));
    }
    validate_object(&kind, &doc).map_err(|e| (Some(object.clone()), e))?;
    let typed = match kind.as_str() {
        "ApiManager" => typed(doc).map(|r| Resource::ApiManager(std::sync::Arc::new(r))),
        "ApiDeployment" => typed(doc).map(|r| Resource::ApiDeployment(std::sync::Arc::new(r))),
        "KeyManager" => typed(doc).map(|r| Resource::KeyManager(std::sync::Arc::new(r))),
        _ => typed(doc).map(|r| Resource::ThrottlePolicy(std::sync::Arc::new(r))),
    };
    typed.map(Some).map_err(|e| (Some(object), e))
}

fn typed<T: serde::de::DeserializeOwned>(doc: Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize::<_, T>(doc).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        fe(&path, e.into_inner().to_string())
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "sequence",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        _ => "scalar",
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn reject_duplicates(report: &mut LoadReport) {
    let mut first: HashMap<ObjectRef, Source> = HashMap::new();
    let mut kept = Vec::with_capacity(report.resources.len());
    for l in std::mem::take(&mut report.resources) {
        let r = l.resource.object_ref();
        if let Some(src) = first.get(&r) {
            report.errors.push(LoadError {
                file: l.source.file.clone(),
                document: Some(l.source.document),
                line: l.source.line,
                object: Some(r),
                field: None,
                message: format!(
                    "duplicate object: already defined in {} document {}; this copy is ignored",
                    src.file.display(),
                    src.document
                ),
            });
        } else {
            first.insert(r, l.source.clone());
            kept.push(l);
        }
    }
    report.resources = kept;
}
