//! `keel new NAME --lang rust|python|js`: a plugin project that builds with one command.
//! The templates are compiled into the binary (docs/plugins.md, "Starting a plugin"), with
//! the plugin world, the Rust guest SDK and the lock files of Keel's own example plugins, so
//! a new project builds against the same pinned versions, away from this repository.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// A plugin language `keel new` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// cargo, wasm32-wasip2.
    Rust,
    /// componentize-py.
    Python,
    /// jco (componentize-js).
    Js,
}

const WIT: &str = include_str!("../../wit/keel-plugin.wit");

/// `(path in the project, contents)`; `{{name}}` and `{{crate}}` are filled in.
fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![
        ("wit/keel-plugin.wit", WIT),
        // The project's own test: `keel test PLUGIN.wasm test.json`.
        ("test.json", include_str!("../../templates/test.json")),
    ];
    match lang {
        Lang::Rust => out.extend([
            (
                "Cargo.toml",
                include_str!("../../templates/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../templates/rust/src/lib.rs"),
            ),
            ("README.md", include_str!("../../templates/rust/README.md")),
            // The versions Keel's own Rust plugins are built with.
            ("Cargo.lock", include_str!("../../plugins/Cargo.lock")),
            (
                "keel-guest/Cargo.toml",
                include_str!("../../templates/rust/keel-guest.Cargo.toml"),
            ),
            (
                "keel-guest/src/lib.rs",
                include_str!("../../guest-sdk/src/lib.rs"),
            ),
        ]),
        Lang::Python => out.extend([
            ("app.py", include_str!("../../templates/python/app.py")),
            (
                "keel_sdk.py",
                include_str!("../../guest-sdk/python/keel_sdk.py"),
            ),
            ("build.sh", include_str!("../../templates/python/build.sh")),
            (
                "README.md",
                include_str!("../../templates/python/README.md"),
            ),
        ]),
        Lang::Js => out.extend([
            ("plugin.js", include_str!("../../templates/js/plugin.js")),
            ("keel.js", include_str!("../../guest-sdk/js/keel.js")),
            (
                "package.json",
                include_str!("../../templates/js/package.json"),
            ),
            ("README.md", include_str!("../../templates/js/README.md")),
            // jco and componentize-js as pinned for Keel's own JavaScript plugin.
            (
                "package-lock.json",
                include_str!("../../plugins/kv-js/package-lock.json"),
            ),
        ]),
    }
    out
}

/// A project name: a plugin name (`[a-z0-9_-]`) that is also a package name in every
/// language (starts with a letter).
pub fn valid_project_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Writes the `lang` project for plugin `name` into `dir` (which must not exist or be
/// empty); returns the files written.
pub fn new_project(name: &str, lang: Lang, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !valid_project_name(name) {
        bail!("{name:?}: a plugin name is 1-64 of [a-z0-9_-], starting with a letter");
    }
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} exists and is not empty", dir.display());
    }
    let krate = name.replace('-', "_");
    let mut written = Vec::new();
    for (rel, text) in files(lang) {
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate}}", &krate)
            .replace("keel-plugin-kv-js", name);
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_is_written_once_with_its_name_filled_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = dir.path().join("my-sm");
        let files = new_project("my-sm", Lang::Rust, &at).expect("new");
        assert!(files.iter().any(|f| f.ends_with("keel-guest/src/lib.rs")));
        let cargo = std::fs::read_to_string(at.join("Cargo.toml")).expect("Cargo.toml");
        assert!(cargo.contains("name = \"my-sm\""), "{cargo}");
        let readme = std::fs::read_to_string(at.join("README.md")).expect("README");
        assert!(readme.contains("release/my_sm.wasm") && !readme.contains("{{"));
        assert!(
            new_project("my-sm", Lang::Rust, &at).is_err(),
            "not over a project"
        );
        for bad in ["", "9lives", "My", "a b", "_x"] {
            assert!(!valid_project_name(bad), "{bad}");
        }
    }
}
