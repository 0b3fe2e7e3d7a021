//! Command-line interface: argument parsing and the exit-code contract (0 ok, 1 user error, 2 usage).

/// `print!` that ignores a closed stdout (`ptl check ... | head`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// `println!` that ignores a closed stdout.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprint!` that ignores a closed stderr.
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod check;
mod doc;
mod fmt;

use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;

pub use doc::markdown as stage_reference_markdown;

#[derive(Parser)]
#[command(
    name = "ptl",
    version,
    about = "Checked, cached, reproducible LLM post-training pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check a pipeline; report every error found
    Check {
        file: PathBuf,
        /// Override a field: `stage.field=value`, `config.seed=1`, or `name=value` for a top-level let
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// Rewrite files in the canonical layout (comments kept)
    Fmt {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Change nothing; exit 1 and name the files that would change
        #[arg(long)]
        check: bool,
    },
    /// List stage kinds, or show one kind's fields and outputs
    Doc {
        kind: Option<String>,
        /// Print the whole stage reference as Markdown (docs/stages.md)
        #[arg(long)]
        markdown: bool,
    },
}

/// Whether diagnostics on stderr may use color.
pub fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Runs the CLI on the process arguments; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    // Deeply nested input recurses; a large stack keeps that an error report, not a crash.
    let worker = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || match cli.command {
            Command::Check { file, set, format } => check::run(&file, &set, format),
            Command::Fmt { files, check } => fmt::run(&files, check),
            Command::Doc { kind, markdown } => doc::run(kind.as_deref(), markdown),
        });
    match worker.map(|w| w.join()) {
        Ok(Ok(code)) => code,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => {
            eprintln!("ptl: cannot start: {e}");
            1
        }
    }
}
