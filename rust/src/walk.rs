//! Directory walking that honors .gitignore (even outside a git repository) and explicit
//! gitignore-style excludes. Only names and file types are collected here; stat and
//! hashing happen afterwards in parallel so the walk itself stays cheap.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ignore::overrides::OverrideBuilder;
use ignore::{WalkBuilder, WalkState};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug)]
pub struct WalkEntry {
    /// Path relative to the walk root, '/'-separated, never empty.
    pub rel: String,
    pub abs: PathBuf,
    pub kind: Kind,
}

pub struct WalkOptions<'a> {
    pub excludes: &'a [String],
    pub gitignore: bool,
}

pub fn walk(root: &Path, opts: &WalkOptions) -> Result<Vec<WalkEntry>, String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", root.display()));
    }
    let mut overrides = OverrideBuilder::new(root);
    for pat in opts.excludes {
        // In ignore's override syntax a leading '!' means "exclude".
        overrides
            .add(&format!("!{pat}"))
            .map_err(|e| format!("invalid exclude pattern '{pat}': {e}"))?;
    }
    let overrides = overrides.build().map_err(|e| e.to_string())?;

    let mut builder = WalkBuilder::new(root);
    builder
        .hidden(false)
        .ignore(false)
        .git_global(false)
        .git_ignore(opts.gitignore)
        .git_exclude(opts.gitignore)
        .parents(opts.gitignore)
        .require_git(false)
        .follow_links(false)
        .overrides(overrides)
        .filter_entry(|e| e.file_name() != ".git");

    let found: Mutex<Vec<WalkEntry>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    builder.build_parallel().run(|| {
        // Each walker thread batches locally to keep the shared lock off the hot path.
        let mut batch = Batch { local: Vec::with_capacity(1024), sink: &found };
        let errors = &errors;
        Box::new(move |res: Result<ignore::DirEntry, ignore::Error>| {
            match res {
                Ok(entry) => {
                    if entry.depth() == 0 {
                        return WalkState::Continue;
                    }
                    let ft = match entry.file_type() {
                        Some(ft) => ft,
                        None => return WalkState::Continue,
                    };
                    let kind = if ft.is_symlink() {
                        Kind::Symlink
                    } else if ft.is_dir() {
                        Kind::Dir
                    } else if ft.is_file() {
                        Kind::File
                    } else {
                        // Sockets, fifos and devices are not build inputs.
                        return WalkState::Continue;
                    };
                    let rel = match entry.path().strip_prefix(root) {
                        Ok(r) => rel_string(r),
                        Err(_) => return WalkState::Continue,
                    };
                    batch.local.push(WalkEntry { rel, abs: entry.into_path(), kind });
                    if batch.local.len() >= 1024 {
                        batch.flush();
                    }
                }
                Err(err) => errors.lock().unwrap().push(err.to_string()),
            }
            WalkState::Continue
        }) as Box<dyn FnMut(Result<ignore::DirEntry, ignore::Error>) -> WalkState + Send>
    });
    // Every visitor (and its Batch) has been dropped, and so flushed, once run() returns.
    let errs = errors.into_inner().unwrap();
    if let Some(e) = errs.into_iter().next() {
        return Err(e);
    }
    let mut out = found.into_inner().unwrap();
    out.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// A walker thread's pending entries; flushed into the shared list when full and on drop.
struct Batch<'s> {
    local: Vec<WalkEntry>,
    sink: &'s Mutex<Vec<WalkEntry>>,
}

impl Batch<'_> {
    fn flush(&mut self) {
        self.sink.lock().unwrap().append(&mut self.local);
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

fn rel_string(p: &Path) -> String {
    let s = p.to_string_lossy();
    if std::path::MAIN_SEPARATOR == '/' {
        s.into_owned()
    } else {
        s.replace(std::path::MAIN_SEPARATOR, "/")
    }
}
