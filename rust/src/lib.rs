//! `ciopt._native`: hashing, Merkle trees and the LMDB store, exposed to Python.
//! Every call that touches the filesystem or hashes bytes releases the GIL.

pub mod b3many;
pub mod hash;
pub mod imports;
pub mod pyscan;
pub mod scan;
pub mod stat_cache;
pub mod store;
pub mod tree;
pub mod walk;

use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use hash::{Digest, DigestFn};
use scan::ScanError;
use store::{Filled, StoreError};
use tree::{Leaf, NodeKind};
use walk::WalkOptions;

create_exception!(_native, PyStoreError, PyException, "The store cannot be opened or used.");
create_exception!(_native, PyCorruptBlobError, PyStoreError, "A stored blob failed verification on read; it has been removed.");

fn store_err(e: StoreError) -> PyErr {
    match e {
        StoreError::Corrupt(m) => PyCorruptBlobError::new_err(m),
        StoreError::Invalid(m) | StoreError::Internal(m) => PyStoreError::new_err(m),
    }
}

fn scan_err(e: ScanError) -> PyErr {
    match e {
        // (errno, strerror, filename) makes Python pick FileNotFoundError etc. itself.
        ScanError::Io(p, e) => {
            let msg = e.to_string();
            let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
            match e.raw_os_error() {
                Some(code) => PyOSError::new_err((code, msg, p.display().to_string())),
                None => PyOSError::new_err(format!("{}: {msg}", p.display())),
            }
        }
        ScanError::Walk(m) => PyOSError::new_err(m),
        ScanError::Store(e) => store_err(e),
    }
}

fn digest_fn(name: &str) -> PyResult<DigestFn> {
    DigestFn::parse(name).map_err(PyValueError::new_err)
}

#[pyclass(name = "Digest", module = "ciopt._native", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyDigest(Digest);

#[pymethods]
impl PyDigest {
    #[new]
    fn new(hash: &str, size: u64) -> PyResult<Self> {
        Ok(PyDigest(Digest { hash: hash::parse_hex(hash).map_err(PyValueError::new_err)?, size }))
    }
    #[staticmethod]
    fn parse(text: &str) -> PyResult<Self> {
        Digest::parse(text).map(PyDigest).map_err(PyValueError::new_err)
    }
    #[getter]
    fn hash(&self) -> String {
        self.0.hex()
    }
    #[getter]
    fn size(&self) -> u64 {
        self.0.size
    }
    fn __str__(&self) -> String {
        self.0.to_string()
    }
    fn __repr__(&self) -> String {
        format!("Digest('{}', {})", self.0.hex(), self.0.size)
    }
    fn __reduce__(&self, py: Python<'_>) -> PyResult<(PyObject, (String, u64))> {
        Ok((py.get_type::<PyDigest>().into_any().unbind(), (self.0.hex(), self.0.size)))
    }
}

#[pyclass(name = "TreeEntry", module = "ciopt._native", frozen, get_all)]
pub struct PyTreeEntry {
    path: String,
    digest: PyDigest,
    is_executable: bool,
    is_symlink: bool,
}

#[pyclass(name = "Tree", module = "ciopt._native", frozen)]
pub struct PyTree {
    #[pyo3(get)]
    root: String,
    #[pyo3(get)]
    digest: PyDigest,
    /// Files read to compute this tree (StatCache misses), and their bytes.
    #[pyo3(get)]
    files_read: u64,
    #[pyo3(get)]
    bytes_read: u64,
    leaves: Vec<Leaf>,
}

#[pymethods]
impl PyTree {
    fn entries(&self) -> Vec<PyTreeEntry> {
        self.leaves
            .iter()
            .map(|l| PyTreeEntry {
                path: l.rel.clone(),
                digest: PyDigest(l.digest),
                is_executable: l.kind == NodeKind::Executable,
                is_symlink: l.kind == NodeKind::Symlink,
            })
            .collect()
    }
    fn files<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for l in &self.leaves {
            d.set_item(&l.rel, l.digest.hex())?;
        }
        Ok(d)
    }
    fn __len__(&self) -> usize {
        self.leaves.len()
    }
    fn __repr__(&self) -> String {
        format!("Tree('{}', {}, {} files)", self.root, self.digest.0, self.leaves.len())
    }
}

fn tree_impl(
    py: Python<'_>,
    f: DigestFn,
    store: Option<&Arc<store::Store>>,
    root: PathBuf,
    excludes: Vec<String>,
    gitignore: bool,
) -> PyResult<PyTree> {
    let scanned = py
        .allow_threads(|| scan::scan_tree(f, store.map(|s| &**s), &root, &WalkOptions { excludes: &excludes, gitignore }))
        .map_err(scan_err)?;
    Ok(PyTree {
        root: root.display().to_string(),
        digest: PyDigest(scanned.root),
        files_read: scanned.files_read,
        bytes_read: scanned.bytes_read,
        leaves: scanned.leaves,
    })
}

#[pyfunction]
#[pyo3(signature = (data, digest = "blake3"))]
fn hash_bytes(py: Python<'_>, data: &[u8], digest: &str) -> PyResult<PyDigest> {
    let f = digest_fn(digest)?;
    Ok(PyDigest(py.allow_threads(|| hash::hash_bytes(f, data))))
}

#[pyfunction]
#[pyo3(signature = (path, digest = "blake3"))]
fn hash_file(py: Python<'_>, path: PathBuf, digest: &str) -> PyResult<PyDigest> {
    let f = digest_fn(digest)?;
    let out = py.allow_threads(|| scan::digest_files(f, None, std::slice::from_ref(&path), true)).map_err(scan_err)?;
    Ok(PyDigest(out[0].digest))
}

#[pyfunction]
#[pyo3(signature = (paths, digest = "blake3"))]
fn hash_files(py: Python<'_>, paths: Vec<PathBuf>, digest: &str) -> PyResult<Vec<PyDigest>> {
    let f = digest_fn(digest)?;
    let out = py.allow_threads(|| scan::digest_files(f, None, &paths, true)).map_err(scan_err)?;
    Ok(out.into_iter().map(|fd| PyDigest(fd.digest)).collect())
}

/// The Merkle root of an explicit set of files (an action's input set), with the
/// same encoding as hash_tree so the two are interchangeable.
#[pyfunction]
#[pyo3(signature = (entries, digest = "blake3"))]
fn tree_digest(entries: Vec<(String, PyRef<'_, PyDigest>, bool)>, digest: &str) -> PyResult<PyDigest> {
    let f = digest_fn(digest)?;
    let mut leaves = Vec::with_capacity(entries.len());
    for (rel, d, exec) in entries {
        if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(PyValueError::new_err(format!("invalid tree path '{rel}': must be relative and normalized")));
        }
        leaves.push(Leaf { rel, digest: d.0, kind: if exec { NodeKind::Executable } else { NodeKind::File } });
    }
    Ok(PyDigest(tree::merkle_root(f, &leaves, &[])))
}

type ImportTuple = (String, u32, Vec<String>, u32, u32);

fn import_tuples(v: Vec<imports::Import>) -> Vec<ImportTuple> {
    v.into_iter().map(|i| (i.module, i.level, i.names, i.line, i.flags)).collect()
}

/// Imports of many files, in parallel (Python through the lexical fast path, the rest with
/// tree-sitter). Each result is a list of
/// (module, level, names, line, flags), or a string when the file could not be read or
/// its language is unknown.
#[pyfunction]
#[pyo3(signature = (paths, lang = None))]
fn extract_imports(py: Python<'_>, paths: Vec<PathBuf>, lang: Option<&str>) -> PyResult<Vec<PyObject>> {
    use rayon::prelude::*;
    let forced = match lang {
        Some(l) => Some(imports::Lang::parse_name(l).ok_or_else(|| PyValueError::new_err(format!("unknown language '{l}'")))?),
        None => None,
    };
    let results: Vec<Result<Vec<ImportTuple>, String>> = py.allow_threads(|| {
        paths
            .par_iter()
            .map(|p| {
                let l = forced.or_else(|| imports::Lang::from_path(p)).ok_or_else(|| format!("{}: unknown language", p.display()))?;
                let src = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(import_tuples(imports::extract(l, &src)))
            })
            .collect()
    });
    results
        .into_iter()
        .map(|r| match r {
            Ok(v) => Ok(v.into_pyobject(py)?.into_any().unbind()),
            Err(e) => Ok(e.into_pyobject(py)?.into_any().unbind()),
        })
        .collect()
}

/// Imports of one source. `full` skips the lexical fast path for Python and walks the whole
/// tree-sitter tree (the reference the fast path must equal).
#[pyfunction]
#[pyo3(signature = (source, lang, full = false))]
fn extract_imports_source(py: Python<'_>, source: &[u8], lang: &str, full: bool) -> PyResult<Vec<ImportTuple>> {
    let l = imports::Lang::parse_name(lang).ok_or_else(|| PyValueError::new_err(format!("unknown language '{lang}'")))?;
    let extract = if full { imports::extract_full } else { imports::extract };
    Ok(import_tuples(py.allow_threads(|| extract(l, source))))
}

#[pyfunction]
#[pyo3(signature = (root, digest = "blake3", excludes = Vec::new(), gitignore = true))]
fn hash_tree(py: Python<'_>, root: PathBuf, digest: &str, excludes: Vec<String>, gitignore: bool) -> PyResult<PyTree> {
    tree_impl(py, digest_fn(digest)?, None, root, excludes, gitignore)
}

/// Sizes such as "20GiB" are parsed by `ciopt.size`, the one parser config and CLI share.
fn parse_size(text: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(n) = text.extract::<u64>() {
        return Ok(n);
    }
    text.py().import("ciopt.size")?.getattr("parse_size")?.call1((text,))?.extract()
}

#[pyclass(name = "Store", module = "ciopt._native", frozen)]
pub struct PyStore {
    inner: Arc<store::Store>,
    #[pyo3(get)]
    max_size: Option<u64>,
}

impl PyStore {
    /// Accepts a Digest, `<hex>/<size>`, or a bare hex hash (size looked up in the store).
    fn to_digest(&self, obj: &Bound<'_, PyAny>) -> PyResult<Option<Digest>> {
        if let Ok(d) = obj.downcast::<PyDigest>() {
            return Ok(Some(d.get().0));
        }
        let s: String = obj.extract().map_err(|_| PyValueError::new_err("expected a Digest or a '<hex>/<size>' string"))?;
        if s.contains('/') {
            return Digest::parse(&s).map(Some).map_err(PyValueError::new_err);
        }
        let h = hash::parse_hex(&s).map_err(|e| PyValueError::new_err(format!("invalid digest '{s}': {e}")))?;
        Ok(self.inner.size_of(&h).map_err(store_err)?.map(|size| Digest { hash: h, size }))
    }

    fn to_digests(&self, objs: &Bound<'_, PyAny>) -> PyResult<Vec<Option<Digest>>> {
        objs.try_iter()?.map(|o| self.to_digest(&o?)).collect()
    }
}

fn action_key(key: &str) -> PyResult<[u8; 32]> {
    hash::parse_hex(key).map_err(|e| PyValueError::new_err(format!("invalid ActionKey '{key}': {e}")))
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (path, digest = None, max_size = None))]
    fn new(py: Python<'_>, path: PathBuf, digest: Option<&str>, max_size: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let want = digest.map(digest_fn).transpose()?;
        let max_size = max_size.map(parse_size).transpose()?;
        let inner = py.allow_threads(|| store::Store::open(&path, want)).map_err(store_err)?;
        Ok(PyStore { inner, max_size })
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.dir.display().to_string()
    }

    #[getter]
    fn digest_function(&self) -> &'static str {
        self.inner.digest_fn.name()
    }

    fn put(&self, py: Python<'_>, data: &[u8]) -> PyResult<PyDigest> {
        let s = &self.inner;
        py.allow_threads(|| s.put(data)).map(PyDigest).map_err(store_err)
    }

    fn put_many(&self, py: Python<'_>, blobs: Vec<Bound<'_, PyBytes>>) -> PyResult<Vec<PyDigest>> {
        let slices: Vec<&[u8]> = blobs.iter().map(|b| b.as_bytes()).collect();
        let s = &self.inner;
        let ds = py.allow_threads(|| s.put_many(&slices)).map_err(store_err)?;
        Ok(ds.into_iter().map(PyDigest).collect())
    }

    fn put_files(&self, py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<Vec<PyDigest>> {
        let s = &self.inner;
        let ds = py.allow_threads(|| s.put_files(&paths)).map_err(store_err)?;
        Ok(ds.into_iter().map(PyDigest).collect())
    }

    fn put_file(&self, py: Python<'_>, path: PathBuf) -> PyResult<PyDigest> {
        let s = &self.inner;
        py.allow_threads(|| s.put_file(&path)).map(PyDigest).map_err(store_err)
    }

    fn get<'py>(&self, py: Python<'py>, digest: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let list = pyo3::types::PyList::new(py, [digest])?;
        Ok(self.get_many(py, list.as_any())?.pop().flatten())
    }

    fn get_many<'py>(&self, py: Python<'py>, digests: &Bound<'py, PyAny>) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
        let wanted = self.to_digests(digests)?;
        let known: Vec<Digest> = wanted.iter().flatten().copied().collect();
        let s = &self.inner;
        let present = py.allow_threads(|| s.present(&known)).map_err(store_err)?;
        // Each blob is copied once, from the LMDB map straight into its bytes object:
        // the objects are allocated here (sizes come from the store's rows, never from
        // the caller alone) and filled and verified in parallel without the GIL.
        let mut objs: Vec<Option<Bound<'py, PyBytes>>> = Vec::with_capacity(known.len());
        let mut bufs: Vec<&mut [MaybeUninit<u8>]> = Vec::with_capacity(known.len());
        for (d, p) in known.iter().zip(&present) {
            if !*p {
                objs.push(None);
                bufs.push(&mut []);
                continue;
            }
            let len = isize::try_from(d.size).map_err(|_| PyValueError::new_err(format!("blob {d} is too large")))?;
            // SAFETY: a NULL source makes an uninitialised bytes object of `len` bytes, which
            // nothing else can see until we return it. Its buffer stays valid while `objs`
            // holds the object, and is written only by fetch_into, each buffer by one thread;
            // fetch_into initialises exactly the buffers it reports Found. Objects whose blob
            // is absent or corrupt are dropped unseen.
            unsafe {
                let obj = Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len))?
                    .downcast_into_unchecked::<PyBytes>();
                let data = pyo3::ffi::PyBytes_AsString(obj.as_ptr()) as *mut MaybeUninit<u8>;
                bufs.push(std::slice::from_raw_parts_mut(data, len as usize));
                objs.push(Some(obj));
            }
        }
        let filled = py.allow_threads(|| s.fetch_into(&known, &mut bufs)).map_err(store_err)?;
        drop(bufs);
        let corrupt: Vec<String> =
            filled.iter().zip(&known).filter(|(f, _)| **f == Filled::Corrupt).map(|(_, d)| d.to_string()).collect();
        if !corrupt.is_empty() {
            return Err(PyCorruptBlobError::new_err(format!(
                "corrupt blob(s) removed from the store: {}",
                corrupt.join(", ")
            )));
        }
        let mut it = filled.into_iter().zip(objs);
        Ok(wanted
            .iter()
            .map(|w| match w {
                None => None,
                Some(_) => match it.next() {
                    Some((Filled::Found, obj)) => obj,
                    _ => None,
                },
            })
            .collect())
    }

    #[pyo3(signature = (digest, dest, executable = false))]
    fn get_to_file(&self, py: Python<'_>, digest: &Bound<'_, PyAny>, dest: PathBuf, executable: bool) -> PyResult<bool> {
        let Some(d) = self.to_digest(digest)? else { return Ok(false) };
        let s = &self.inner;
        py.allow_threads(|| s.materialize(&d, &dest, executable)).map_err(store_err)
    }

    fn contains(&self, digest: &Bound<'_, PyAny>) -> PyResult<bool> {
        match self.to_digest(digest)? {
            None => Ok(false),
            Some(d) => Ok(self.inner.contains_many(&[d]).map_err(store_err)?[0]),
        }
    }

    fn find_missing(&self, py: Python<'_>, digests: &Bound<'_, PyAny>) -> PyResult<Vec<PyDigest>> {
        let ds: Vec<Digest> = digests
            .try_iter()?
            .map(|o| {
                let o = o?;
                match o.downcast::<PyDigest>() {
                    Ok(d) => Ok(d.get().0),
                    Err(_) => Digest::parse(&o.extract::<String>()?).map_err(PyValueError::new_err),
                }
            })
            .collect::<PyResult<_>>()?;
        let s = &self.inner;
        let present = py.allow_threads(|| s.contains_many(&ds)).map_err(store_err)?;
        Ok(ds.into_iter().zip(present).filter(|(_, p)| !p).map(|(d, _)| PyDigest(d)).collect())
    }

    fn action_get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let v = self.inner.action_get(&action_key(key)?).map_err(store_err)?;
        Ok(v.map(|b| PyBytes::new(py, &b)))
    }

    fn action_get_many<'py>(&self, py: Python<'py>, keys: Vec<String>) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
        let ks: Vec<[u8; 32]> = keys.iter().map(|k| action_key(k)).collect::<PyResult<_>>()?;
        let s = &self.inner;
        let vals = py.allow_threads(|| s.action_get_many(&ks)).map_err(store_err)?;
        Ok(vals.into_iter().map(|v| v.map(|b| PyBytes::new(py, &b))).collect())
    }

    fn action_put_many(&self, py: Python<'_>, items: Vec<(String, Bound<'_, PyBytes>)>) -> PyResult<()> {
        let ks: Vec<([u8; 32], &[u8])> =
            items.iter().map(|(k, v)| Ok((action_key(k)?, v.as_bytes()))).collect::<PyResult<_>>()?;
        let s = &self.inner;
        py.allow_threads(|| s.action_put_many(&ks)).map_err(store_err)
    }

    fn action_put(&self, key: &str, result: &[u8]) -> PyResult<()> {
        self.inner.action_put(&action_key(key)?, result).map_err(store_err)
    }

    fn action_delete(&self, key: &str) -> PyResult<bool> {
        self.inner.action_delete(&action_key(key)?).map_err(store_err)
    }

    fn hash_files(&self, py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<Vec<PyDigest>> {
        let s = &self.inner;
        let out = py.allow_threads(|| scan::digest_files(s.digest_fn, Some(s), &paths, true)).map_err(scan_err)?;
        Ok(out.into_iter().map(|fd| PyDigest(fd.digest)).collect())
    }

    #[pyo3(signature = (root, excludes = Vec::new(), gitignore = true))]
    fn hash_tree(&self, py: Python<'_>, root: PathBuf, excludes: Vec<String>, gitignore: bool) -> PyResult<PyTree> {
        tree_impl(py, self.inner.digest_fn, Some(&self.inner), root, excludes, gitignore)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner;
        let st = py.allow_threads(|| s.stats()).map_err(store_err)?;
        let d = PyDict::new(py);
        d.set_item("path", self.path())?;
        d.set_item("digest_function", s.digest_fn.name())?;
        d.set_item("blobs", st.blobs)?;
        d.set_item("blob_bytes", st.blob_bytes)?;
        d.set_item("inline_blobs", st.inline_blobs)?;
        d.set_item("external_blobs", st.external_blobs)?;
        d.set_item("action_results", st.action_results)?;
        d.set_item("stat_entries", st.stat_entries)?;
        d.set_item("env_bytes", st.env_bytes)?;
        d.set_item("max_size", self.max_size)?;
        Ok(d)
    }

    #[pyo3(signature = (max_size = None))]
    fn gc<'py>(&self, py: Python<'py>, max_size: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyDict>> {
        let cap = match max_size {
            Some(m) => parse_size(m)?,
            None => self.max_size.ok_or_else(|| {
                PyValueError::new_err("gc needs a size cap: pass max_size or open the store with max_size")
            })?,
        };
        let s = &self.inner;
        let r = py.allow_threads(|| s.gc(cap)).map_err(store_err)?;
        let d = PyDict::new(py);
        d.set_item("evicted", r.evicted)?;
        d.set_item("evicted_bytes", r.evicted_bytes)?;
        d.set_item("remaining_bytes", r.remaining_bytes)?;
        d.set_item("orphans_removed", r.orphans_removed)?;
        Ok(d)
    }

    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner;
        let r = py.allow_threads(|| s.verify()).map_err(store_err)?;
        let d = PyDict::new(py);
        d.set_item("checked", r.checked)?;
        d.set_item("corrupt", r.corrupt.iter().map(|x| x.to_string()).collect::<Vec<_>>())?;
        d.set_item("missing", r.missing.iter().map(|x| x.to_string()).collect::<Vec<_>>())?;
        d.set_item("orphans_removed", r.orphans_removed)?;
        Ok(d)
    }

    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        let s = &self.inner;
        py.allow_threads(|| s.flush_touches()).map_err(store_err)
    }

    fn __repr__(&self) -> String {
        format!("Store('{}', digest='{}')", self.path(), self.inner.digest_fn.name())
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("StoreError", m.py().get_type::<PyStoreError>())?;
    m.add("CorruptBlobError", m.py().get_type::<PyCorruptBlobError>())?;
    m.add_class::<PyDigest>()?;
    m.add_class::<PyTree>()?;
    m.add_class::<PyTreeEntry>()?;
    m.add_class::<PyStore>()?;
    m.add_function(wrap_pyfunction!(hash_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(hash_file, m)?)?;
    m.add_function(wrap_pyfunction!(hash_files, m)?)?;
    m.add_function(wrap_pyfunction!(hash_tree, m)?)?;
    m.add_function(wrap_pyfunction!(tree_digest, m)?)?;
    m.add_function(wrap_pyfunction!(extract_imports, m)?)?;
    m.add_function(wrap_pyfunction!(extract_imports_source, m)?)?;
    m.add("IMPORT_WEAK", imports::WEAK)?;
    m.add("IMPORT_TYPE_CHECKING", imports::TYPE_CHECKING)?;
    m.add("IMPORT_DYNAMIC", imports::DYNAMIC)?;
    m.add("IMPORT_LAZY", imports::LAZY)?;
    m.add("IMPORT_UNRESOLVED", imports::UNRESOLVED)?;
    m.add("IMPORT_STAR", imports::STAR)?;
    m.add("IMPORT_REEXPORT", imports::REEXPORT)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
