//! Reading pipeline files and imports (relative paths and the `std/` library compiled into the binary).

use super::{Checker, Frame, ModuleState};
use crate::lang::ast::{Ident, StrLit};
use crate::lang::diag::Diag;
use crate::lang::source::{FileId, Loc, Span};
use crate::lang::value::{ModuleId, Value};
use crate::lang::{parse, stdlib};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

impl Checker {
    /// Loads and parses the pipeline file; it becomes module 0.
    pub(super) fn load_root(&mut self, path: &Path, bytes: &[u8]) -> Option<ModuleId> {
        let file = self.add_source(path.display().to_string(), Some(path.to_path_buf()), bytes)?;
        let dir = parent_dir(path);
        let key = module_key(path);
        self.loading.push((key.clone(), path.display().to_string()));
        self.add_module(key, file, dir, String::new())
    }

    /// Registers a source text; invalid UTF-8 is reported (and shown lossily).
    fn add_source(&mut self, name: String, path: Option<PathBuf>, bytes: &[u8]) -> Option<FileId> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Some(self.sources.add(name, path, text)),
            Err(e) => {
                let at = e.valid_up_to();
                let lossy = String::from_utf8_lossy(bytes).into_owned();
                let file = self.sources.add(name, path, lossy);
                self.error(
                    Diag::error("ptl::invalid_utf8", "the file is not valid UTF-8")
                        .label(
                            Loc {
                                file,
                                span: Span::new(at, at + '\u{FFFD}'.len_utf8()),
                            },
                            format!("invalid byte at offset {at}"),
                        )
                        .help("save the file as UTF-8"),
                );
                None
            }
        }
    }

    /// Parses a registered file into a new module (without running it).
    fn add_module(
        &mut self,
        key: String,
        file: FileId,
        dir: PathBuf,
        prefix: String,
    ) -> Option<ModuleId> {
        let ast = match parse::parse(file, self.sources.text(file)) {
            Ok(ast) => ast,
            Err(diags) => {
                for d in diags {
                    self.error(d);
                }
                return None;
            }
        };
        let id = self.modules.len();
        self.modules.push(ModuleState {
            file,
            dir,
            ast: Rc::new(ast),
            globals: HashMap::new(),
            prefix,
        });
        self.module_keys.insert(key, id);
        Some(id)
    }

    /// `import "path.ptl" [as name]`: loads, runs and binds a module (each file is loaded once).
    pub(super) fn import(&mut self, frame: &mut Frame, lit: &StrLit, alias: Option<&Ident>) {
        let at = self.loc(frame, lit.span);
        let stem = Path::new(&lit.value)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match alias {
            Some(a) => a.clone(),
            None => {
                let valid = stem
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    self.error(
                        Diag::error(
                            "ptl::bad_import",
                            format!("`{}` needs a name to be imported as", lit.value),
                        )
                        .label(at, "the file name is not a valid name")
                        .help(format!("write `import \"{}\" as some_name`", lit.value)),
                    );
                    return;
                }
                Ident {
                    name: stem,
                    span: lit.span,
                }
            }
        };
        let value = self.load_import(frame, lit, at, &name.name);
        self.bind(frame, &name, value, false);
    }

    fn load_import(&mut self, frame: &Frame, lit: &StrLit, at: Loc, alias: &str) -> Value {
        let (key, display, bytes, dir, path) = if let Some(name) = lit.value.strip_prefix("std/") {
            match stdlib::get(name) {
                Some(text) => (
                    format!("std/{name}"),
                    format!("std/{name}"),
                    text.as_bytes().to_vec(),
                    self.modules[0].dir.clone(),
                    None,
                ),
                None => {
                    let names: Vec<String> = stdlib::FILES
                        .iter()
                        .map(|(n, _)| format!("std/{n}"))
                        .collect();
                    self.error(
                        Diag::error(
                            "ptl::import_not_found",
                            format!("no standard library file `{}`", lit.value),
                        )
                        .label(at, "not in the standard library")
                        .help(format!("the standard library has: {}", names.join(", "))),
                    );
                    return Value::Error;
                }
            }
        } else {
            let path = self.modules[frame.module].dir.join(&lit.value);
            match std::fs::read(&path) {
                Ok(bytes) => (
                    module_key(&path),
                    path.display().to_string(),
                    bytes,
                    parent_dir(&path),
                    Some(path),
                ),
                Err(e) => {
                    self.error(
                        Diag::error(
                            "ptl::import_not_found",
                            format!("cannot import `{}`: {e}", lit.value),
                        )
                        .label(at, "not found")
                        .help(format!(
                            "imports are relative to the importing file; looked for {}",
                            path.display()
                        )),
                    );
                    return Value::Error;
                }
            }
        };
        if let Some(pos) = self.loading.iter().position(|(k, _)| *k == key) {
            let mut chain: Vec<&str> = self.loading[pos..]
                .iter()
                .map(|(_, d)| d.as_str())
                .collect();
            chain.push(&display);
            let d = Diag::error("ptl::import_cycle", "import cycle")
                .label(at, "imports a file that is still being loaded")
                .help(format!(
                    "the imports go {}; move what both need into a third file",
                    chain.join(" → ")
                ));
            self.error(d);
            return Value::Error;
        }
        if let Some(&m) = self.module_keys.get(&key) {
            return Value::Module(m);
        }
        let Some(file) = self.add_source(display.clone(), path, &bytes) else {
            return Value::Error;
        };
        let Some(m) = self.add_module(key.clone(), file, dir, alias.to_string()) else {
            return Value::Error;
        };
        self.loading.push((key, display));
        self.run_module(m);
        self.loading.pop();
        Value::Module(m)
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// One key per file, however it was reached.
fn module_key(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
