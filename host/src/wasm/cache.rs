//! The compiled-module cache (`[global] wasm_cache = "DIR"`): a module
//! compiled once is stored as wasmtime's precompiled image and mapped from
//! the file on later loads (start-up, reload, `check`).
//!
//! Why: compiling pulls Cranelift's code (several MiB of the binary) and
//! the WAT parser into the process's resident set, and its allocations into
//! the heap, for the life of the daemon; a cached module is mapped and
//! ready without either (see bench/README.md, memory table). It is also
//! what wasmtime's own cache does, without its extra dependencies.
//!
//! A cached image is native code the daemon runs, so the directory must be
//! the daemon's: owned by its user and writable by nobody else, checked on
//! the directory and on each opened file. An image is keyed by the SHA-256
//! of the module's bytes (binary or text) and of the engine's compatibility
//! hash (wasmtime version, target, settings), so a changed module, engine
//! setting or wasmtime release never picks up a stale image; wasmtime also
//! checks the image's header itself. Files are written whole under a
//! temporary name and renamed, never changed in place (a mapped image must
//! stay as it was). Failing to write the cache is a warning, never an error.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// The cache directory of a config, checked once per load.
#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: PathBuf,
}

/// Feeds a `Hash` value into SHA-256 (the engine's compatibility hash is
/// only available as `impl Hash`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0 // unused: the digest is read from the inner state
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why `meta` may not hold native code for this process, if it may not.
fn untrusted(meta: &std::fs::Metadata) -> Option<String> {
    let me = euid();
    if meta.uid() != me {
        return Some(format!(
            "is owned by uid {}, not by the daemon's user (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "is writable by other users (mode {mode:04o}; want 0700 or 0755)"
        ));
    }
    None
}

impl ModuleCache {
    /// Opens (creating it with mode 0700 if missing) the cache directory;
    /// an error says what is wrong with it.
    pub fn open(dir: &Path) -> Result<ModuleCache, String> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create the directory: {e}"))?;
        }
        let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read it: {e}"))?;
        if !meta.is_dir() {
            return Err("is not a directory".into());
        }
        if let Some(why) = untrusted(&meta) {
            return Err(format!(
                "{why}: compiled modules in it run as native code in the daemon"
            ));
        }
        Ok(ModuleCache {
            dir: dir.to_path_buf(),
        })
    }

    /// The image file of `bytes` compiled by `engine`.
    fn path_of(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        h.0.update(b"\0portcullis module cache v1\0");
        h.0.update(bytes);
        let digest = h.0.finalize();
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.cwasm"))
    }

    /// The cached image of `bytes`, if there is a usable one.
    fn load(&self, engine: &Engine, path: &Path) -> Option<Module> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "wasm_cache: cannot open a cached module; compiling");
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        if let Some(why) = untrusted(&meta)
            .or_else(|| (!meta.is_file()).then(|| "is not a regular file".to_string()))
        {
            tracing::warn!(path = %path.display(), "wasm_cache: the cached module {why}; compiling instead");
            return None;
        }
        // SAFETY: the file is the daemon's (owned by its user, writable by
        // no other, opened without following a link), was written by
        // `store` from `Module::serialize` under a name that hashes the
        // engine's settings and the module's bytes, and is never modified
        // in place (replaced by rename only), so the mapping stays valid.
        // wasmtime checks the image's version and settings header too.
        match unsafe { Module::deserialize_open_file(engine, file) } {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "wasm_cache: cannot use a cached module; compiling");
                None
            }
        }
    }

    /// Writes `module`'s image for the next load (best effort).
    fn store(&self, module: &Module, path: &Path) {
        let result = (|| -> std::io::Result<()> {
            let image = module.serialize().map_err(std::io::Error::other)?;
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            let written = f.write_all(&image).and_then(|()| f.sync_all());
            drop(f);
            if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), error = %e, "wasm_cache: cannot store a compiled module (the next start compiles it again)");
        }
    }

    /// The module for `bytes`: from the cache, else compiled by `compile`
    /// and stored.
    pub fn get_or_compile<E>(
        &self,
        engine: &Engine,
        bytes: &[u8],
        compile: impl FnOnce() -> Result<Module, E>,
    ) -> Result<Module, E> {
        let path = self.path_of(engine, bytes);
        if let Some(m) = self.load(engine, &path) {
            return Ok(m);
        }
        let module = compile()?;
        self.store(&module, &path);
        Ok(module)
    }
}

/// Only for tests: a file handle's mapping cannot be checked otherwise.
#[cfg(test)]
pub(crate) fn image_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str =
        r#"(module (memory (export "memory") 1) (func (export "f") (result i32) i32.const 7))"#;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pc-wasm-cache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn stores_then_maps_the_same_module() {
        let engine = crate::wasm::engine::engine().expect("engine");
        let dir = tmpdir("roundtrip");
        let cache = ModuleCache::open(&dir).expect("open");
        let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "created private");
        let mut compiled = 0;
        let m1 = cache
            .get_or_compile(engine, WAT.as_bytes(), || {
                compiled += 1;
                Module::new(engine, WAT)
            })
            .expect("compile");
        assert!(m1.get_export("f").is_some());
        assert_eq!(image_files(&dir).len(), 1, "one image written");
        let m2 = cache
            .get_or_compile(engine, WAT.as_bytes(), || {
                compiled += 1;
                Module::new(engine, WAT)
            })
            .expect("cached");
        assert_eq!(compiled, 1, "the second load came from the cache");
        assert!(m2.get_export("f").is_some());
        // Another module gets its own image.
        let other = WAT.replace("i32.const 7", "i32.const 8");
        cache
            .get_or_compile(engine, other.as_bytes(), || Module::new(engine, &other))
            .expect("other");
        assert_eq!(image_files(&dir).len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_image_is_recompiled_and_replaced() {
        let engine = crate::wasm::engine::engine().expect("engine");
        let dir = tmpdir("corrupt");
        let cache = ModuleCache::open(&dir).expect("open");
        cache
            .get_or_compile(engine, WAT.as_bytes(), || Module::new(engine, WAT))
            .expect("compile");
        let files = image_files(&dir);
        let [file] = files.as_slice() else {
            panic!("one image expected: {files:?}")
        };
        std::fs::write(file, b"not an image").expect("corrupt");
        let mut compiled = false;
        let m = cache
            .get_or_compile(engine, WAT.as_bytes(), || {
                compiled = true;
                Module::new(engine, WAT)
            })
            .expect("recompiled");
        assert!(compiled && m.get_export("f").is_some());
        assert!(
            std::fs::metadata(file).expect("image").len() > 100,
            "replaced by a good image"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tmpdir("open");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = ModuleCache::open(&dir).expect_err("world-writable");
        assert!(
            err.contains("writable by other users") && err.contains("0777"),
            "{err}"
        );
        let file = dir.join("f");
        std::fs::write(&file, b"x").expect("file");
        let err = ModuleCache::open(&file).expect_err("a file");
        assert!(err.contains("not a directory"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
