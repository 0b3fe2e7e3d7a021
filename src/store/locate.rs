//! Which store a command uses, found the same way by every command: `--store DIR`, else `PTL_STORE`,
//! else `.ptl/` beside the pipeline file; a command given no pipeline (`gc`, `store verify`) looks for
//! `.ptl/` in the current folder and the folders above it, as git looks for `.git/`.

use std::path::{Path, PathBuf};

/// The variable that names a store for every command.
pub const ENV: &str = "PTL_STORE";
/// The store's folder name beside a pipeline file.
pub const DIR_NAME: &str = ".ptl";

fn from_env() -> Option<PathBuf> {
    std::env::var_os(ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The store of the pipeline `file`: `flag`, else `PTL_STORE`, else `.ptl/` beside the file.
pub fn for_pipeline(file: &Path, flag: Option<&Path>) -> PathBuf {
    if let Some(f) = flag {
        return f.to_path_buf();
    }
    if let Some(env) = from_env() {
        return env;
    }
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(DIR_NAME)
}

/// Why no store was found for a command without a pipeline.
#[derive(Debug)]
pub struct NotFound {
    /// What was looked at, for the message.
    pub looked: String,
    /// Stores in folders below the current one (`pipelines/.ptl`), as hints.
    pub below: Vec<PathBuf>,
}

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no ptl store found: {}", self.looked)
    }
}

impl NotFound {
    /// The help line: name the pipeline, or one of the stores found below.
    pub fn help(&self, command: &str) -> String {
        match self.below.as_slice() {
            [] => format!(
                "a store is made by `ptl run PIPELINE.ptl` beside the pipeline; name it with `{command} PIPELINE.ptl`, `--store DIR` or {ENV}"
            ),
            found => {
                let list: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
                format!(
                    "found {}: name its pipeline (`{command} PIPELINE.ptl`) or `--store {}`",
                    list.join(", "),
                    list[0]
                )
            }
        }
    }
}

/// The store of a command that may name a pipeline: as [`for_pipeline`] when it does; otherwise
/// `flag`, `PTL_STORE`, or the nearest `.ptl/` from the current folder up. The folder must exist.
pub fn existing(pipeline: Option<&Path>, flag: Option<&Path>) -> Result<PathBuf, NotFound> {
    let explicit = flag.map(Path::to_path_buf).or_else(from_env);
    let dir = match (pipeline, explicit) {
        (Some(file), _) => Some(for_pipeline(file, flag)),
        (None, Some(dir)) => Some(dir),
        (None, None) => None,
    };
    if let Some(dir) = dir {
        if dir.is_dir() {
            return Ok(dir);
        }
        let from = match (flag, pipeline) {
            (Some(_), _) => "--store",
            (None, _) if from_env().is_some() => ENV,
            _ => "the pipeline's folder",
        };
        return Err(NotFound {
            looked: format!("{} does not exist (from {from})", dir.display()),
            below: Vec::new(),
        });
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    for folder in cwd.ancestors() {
        let candidate = folder.join(DIR_NAME);
        if candidate.is_dir() {
            return Ok(relative_to(&candidate, &cwd));
        }
    }
    Err(NotFound {
        looked: format!(
            "no {DIR_NAME}/ in {} or the folders above it, and {ENV} is not set",
            cwd.display()
        ),
        below: below(&cwd, 2),
    })
}

/// `path` shown relative to `base` when it is below it.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    path.strip_prefix(base)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Stores in the folders below `root`, at most `depth` levels down (hidden folders, `target/` and
/// `node_modules/` are not searched).
fn below(root: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut level = vec![root.to_path_buf()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for dir in level {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut subs: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            subs.sort();
            for sub in subs {
                let name = sub.file_name().map(|n| n.to_string_lossy().into_owned());
                let name = name.unwrap_or_default();
                if sub.join(DIR_NAME).is_dir() {
                    found.push(relative_to(&sub.join(DIR_NAME), root));
                }
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    next.push(sub);
                }
            }
        }
        level = next;
    }
    found
}
