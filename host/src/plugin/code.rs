//! Plugin files as an assembly read them. A full reload reads every plugin
//! file again; `POST /plugins/{name}/reload` reads only `name`'s and takes
//! every other plugin's code from the runtime in force, so a file another
//! plugin's author is still editing is not picked up by someone else's reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One plugin's code file: its plugin, its path (as resolved) and its bytes.
#[derive(Debug, Clone)]
pub struct CodeFile {
    pub plugin: String,
    pub path: PathBuf,
    pub bytes: Arc<[u8]>,
}

/// The plugin files of one assembly: those it may take instead of reading
/// them, and those it read or took (kept in the `Runtime` for the next).
#[derive(Debug, Default)]
pub struct CodeFiles {
    reuse: Vec<CodeFile>,
    used: Vec<CodeFile>,
}

impl CodeFiles {
    /// Reads every file from disk.
    pub fn from_disk() -> CodeFiles {
        CodeFiles::default()
    }

    /// Takes the files of `previous` (a runtime's [`CodeFiles::into_used`])
    /// for every plugin but `reread`, whose files are read from disk, as
    /// are those of plugins loading the same files (Wasm plugins sharing
    /// one VM must run the same module).
    pub fn reusing(previous: &[CodeFile], reread: &str) -> CodeFiles {
        let fresh: Vec<&Path> = previous
            .iter()
            .filter(|f| f.plugin == reread)
            .map(|f| f.path.as_path())
            .collect();
        CodeFiles {
            reuse: previous
                .iter()
                .filter(|f| f.plugin != reread && !fresh.contains(&f.path.as_path()))
                .cloned()
                .collect(),
            used: Vec::new(),
        }
    }

    /// Plugin `plugin`'s file at `path`: the kept copy if this assembly may
    /// reuse one for that plugin and path, else the file as it is on disk.
    pub fn read(&mut self, plugin: &str, path: &Path) -> std::io::Result<Arc<[u8]>> {
        let kept = self
            .reuse
            .iter()
            .find(|f| f.plugin == plugin && f.path == path)
            .map(|f| Arc::clone(&f.bytes));
        let bytes = match kept {
            Some(b) => b,
            None => Arc::from(std::fs::read(path)?),
        };
        self.used.push(CodeFile {
            plugin: plugin.to_string(),
            path: path.to_path_buf(),
            bytes: Arc::clone(&bytes),
        });
        Ok(bytes)
    }

    /// What this assembly read or took, for the runtime to keep.
    pub fn into_used(self) -> Vec<CodeFile> {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_plugin_is_read_again() {
        let dir = std::env::temp_dir().join(format!("portcullis-code-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.lua"), dir.join("b.lua"));
        std::fs::write(&a, "a1").unwrap();
        std::fs::write(&b, "b1").unwrap();
        let mut first = CodeFiles::from_disk();
        assert_eq!(&*first.read("a", &a).unwrap(), b"a1");
        assert_eq!(&*first.read("b", &b).unwrap(), b"b1");
        let kept = first.into_used();

        std::fs::write(&a, "a2").unwrap();
        std::fs::write(&b, "b2").unwrap();
        let mut only_a = CodeFiles::reusing(&kept, "a");
        assert_eq!(&*only_a.read("a", &a).unwrap(), b"a2");
        assert_eq!(&*only_a.read("b", &b).unwrap(), b"b1", "b's kept copy");
        // A plugin whose path changed is read from its new path.
        let c = dir.join("c.lua");
        std::fs::write(&c, "c1").unwrap();
        assert_eq!(&*only_a.read("b", &c).unwrap(), b"c1");
        let again = only_a.into_used();
        assert_eq!(again.len(), 3);
        // Plugins that load the same file are read again together.
        std::fs::write(&b, "b3").unwrap();
        let shared = [
            CodeFile {
                plugin: "x".into(),
                path: b.clone(),
                bytes: Arc::from(&b"b1"[..]),
            },
            CodeFile {
                plugin: "y".into(),
                path: b.clone(),
                bytes: Arc::from(&b"b1"[..]),
            },
        ];
        let mut only_x = CodeFiles::reusing(&shared, "x");
        assert_eq!(&*only_x.read("y", &b).unwrap(), b"b3");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
