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
mod data;
mod doc;
mod engine;
mod fmt;
mod generate;
mod interrupt;
mod reward;
mod score;
mod serve;
mod worker;
mod worker_store;

use crate::plan::compute::on_pool;
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
    /// Text for people
    Human,
    /// JSON for programs
    Json,
}

/// Help texts that several commands share.
const FILE_HELP: &str = "The pipeline file (.ptl)";
const SET_HELP: &str =
    "Override a field: `stage.field=value`, `config.seed=1`, or `name=value` for a top-level let (repeatable)";
const STORE_HELP: &str =
    "The store folder (default: $PTL_STORE, else .ptl/ beside the pipeline file)";
const FOUND_STORE_HELP: &str = "The store folder (default: the pipeline's; without one, $PTL_STORE, else the nearest .ptl/ from the current folder up)";
const FOUND_PIPELINE_HELP: &str = "A pipeline file whose store to use (.ptl/ beside it)";
const JOBS_HELP: &str = "Stages to run at once";
const FORMAT_HELP: &str = "Output format: human-readable text or JSON";
/// Where `ptl score`, `generate` and `reward` compute.
#[derive(clap::Args, Clone, Debug)]
pub struct ComputeArgs {
    /// "auto" (CUDA when ptl is built with it and a GPU is present, else the CPU), "cpu", "cuda" or "cuda:N"
    #[arg(long, default_value = "auto")]
    device: String,
    /// Compute dtype
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DtypeArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum DtypeArg {
    /// f32 on the CPU, bf16 on CUDA
    Auto,
    /// 32-bit floats
    F32,
    /// bfloat16 weights and activations (norms and softmax in f32)
    Bf16,
    /// float16 weights and activations (norms and softmax in f32)
    F16,
}

impl ComputeArgs {
    /// The device and dtype, or the reason they cannot be had (a usage error).
    fn resolve(&self) -> Option<crate::plan::compute::Compute> {
        let dtype = match self.dtype {
            DtypeArg::Auto => "auto",
            DtypeArg::F32 => "f32",
            DtypeArg::Bf16 => "bf16",
            DtypeArg::F16 => "f16",
        };
        crate::plan::compute::Compute::resolve(&self.device, dtype)
            .map_err(|e| errln!("error: {e}"))
            .ok()
    }
}

const MODEL_HELP: &str = "A local Hugging Face model folder (config.json, safetensors, tokenizer)";
/// What `ptl score` and `generate` put on the model folder.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadingArgs {
    /// A PEFT LoRA adapter folder to apply on top of the model
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Hold the model's projections in NF4 with double quantization, as a QLoRA stage trains
    /// against (transformers' load_in_4bit with bitsandbytes' nf4 and double quantization)
    #[arg(long = "load-in-4bit")]
    load_in_4bit: bool,
}

impl LoadingArgs {
    fn loading(self) -> crate::plan::compute::Loading {
        crate::plan::compute::Loading {
            adapter: self.adapter,
            nf4: self.load_in_4bit,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check a pipeline; report every error found
    Check {
        #[arg(help = FILE_HELP)]
        file: PathBuf,
        #[arg(long = "set", value_name = "PATH=VALUE", help = SET_HELP)]
        set: Vec<String>,
        #[arg(long, value_enum, default_value = "human", help = FORMAT_HELP)]
        format: OutputFormat,
    },
    /// Rewrite files in the canonical layout (comments kept)
    Fmt {
        /// The .ptl files to format
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Change nothing; exit 1 and name the files that would change
        #[arg(long)]
        check: bool,
    },
    /// Show every stage in order: cached, run (and why) or blocked
    Plan {
        #[arg(help = FILE_HELP)]
        file: PathBuf,
        #[arg(long = "set", value_name = "PATH=VALUE", help = SET_HELP)]
        set: Vec<String>,
        #[arg(long, value_name = "DIR", help = STORE_HELP)]
        store: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "human", help = FORMAT_HELP)]
        format: OutputFormat,
    },
    /// Run what is stale; independent stages in parallel. Ctrl-C stops at the next step and saves a checkpoint
    Run {
        #[arg(help = FILE_HELP)]
        file: PathBuf,
        #[arg(long = "set", value_name = "PATH=VALUE", help = SET_HELP)]
        set: Vec<String>,
        #[arg(long, value_name = "DIR", help = STORE_HELP)]
        store: Option<PathBuf>,
        /// Run only this stage (its upstream must already be built)
        #[arg(long, value_name = "STAGE", conflicts_with = "from")]
        only: Option<String>,
        /// Run this stage and everything downstream of it
        #[arg(long, value_name = "STAGE")]
        from: Option<String>,
        /// Stages to run at once (default: 1 here, 8 on a Ray cluster)
        #[arg(short = 'j', long = "jobs")]
        jobs: Option<usize>,
        /// After a failure, finish the stages that do not depend on it
        #[arg(long)]
        keep_going: bool,
        /// Where stages run: `local`, or `ray=http://head:8265` (default: `config.executor`)
        #[arg(long, value_name = "local|ray=URL")]
        executor: Option<String>,
        /// Where the lock file goes (default: FILE.lock beside the pipeline)
        #[arg(long, value_name = "FILE")]
        lock_file: Option<PathBuf>,
        /// Fail rather than change the lock file: every stage's key and outputs must match it (for CI)
        #[arg(long)]
        locked: bool,
        /// `json`: one event object per line (the events of `ptl watch --format json`, then a summary)
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// Run the pipeline, then rerun exactly the stages whose inputs change
    Watch {
        #[arg(help = FILE_HELP)]
        file: PathBuf,
        #[arg(long = "set", value_name = "PATH=VALUE", help = SET_HELP)]
        set: Vec<String>,
        #[arg(long, value_name = "DIR", help = STORE_HELP)]
        store: Option<PathBuf>,
        /// Quiet time after a change before re-planning, in milliseconds
        #[arg(long, value_name = "MS", default_value_t = 50)]
        debounce: u64,
        /// Time a cancelled stage gets to stop, in milliseconds
        #[arg(long, value_name = "MS", default_value_t = 5000)]
        grace: u64,
        #[arg(short = 'j', long = "jobs", default_value_t = 1, help = JOBS_HELP)]
        jobs: usize,
        /// `json`: one event object per line (plan, stage_started, stage_finished, stage_cancelled, diagnostics, change, idle)
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// The DAG with statuses, as Graphviz dot or Mermaid
    Graph {
        #[arg(help = FILE_HELP)]
        file: PathBuf,
        #[arg(long = "set", value_name = "PATH=VALUE", help = SET_HELP)]
        set: Vec<String>,
        #[arg(long, value_name = "DIR", help = STORE_HELP)]
        store: Option<PathBuf>,
        /// Graph language
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
    /// Remove store entries that no pipeline's lock file references
    Gc {
        #[arg(help = FOUND_PIPELINE_HELP)]
        pipeline: Option<PathBuf>,
        #[arg(long, value_name = "DIR", help = FOUND_STORE_HELP)]
        store: Option<PathBuf>,
        /// Say what would be removed; remove nothing
        #[arg(long)]
        dry_run: bool,
        /// Also remove the checkpoints of unfinished stages (they could resume from them)
        #[arg(long)]
        checkpoints: bool,
    },
    /// Per-token log-probabilities of JSONL rows (`text`, `prompt`+`completion`, or `ids`) under a model
    Score {
        #[arg(help = MODEL_HELP)]
        model: PathBuf,
        #[command(flatten)]
        with: LoadingArgs,
        /// A JSONL file, or - for standard input
        #[arg(long)]
        input: PathBuf,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// The reward of each JSONL row (`messages`, `prompt`+`completion`, or `ids`) under a reward model
    Reward {
        /// A reward model folder (what a `reward_model` stage writes)
        model: PathBuf,
        /// A JSONL file, or - for standard input
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_enum, default_value = "human", help = FORMAT_HELP)]
        format: OutputFormat,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Continue a prompt with a model (greedy by default; sampling with --temperature)
    Generate {
        #[arg(help = MODEL_HELP)]
        model: PathBuf,
        #[command(flatten)]
        with: LoadingArgs,
        /// The text to continue (with --chat: the user message)
        #[arg(long, conflicts_with = "input")]
        prompt: Option<String>,
        /// JSONL rows with a `prompt`
        #[arg(long)]
        input: Option<PathBuf>,
        /// Tokens to generate at most (fewer when the model ends its answer)
        #[arg(long = "max-new-tokens", default_value_t = 64)]
        max_new_tokens: usize,
        /// Pick the most likely token each step (the default unless --temperature is given)
        #[arg(long, conflicts_with = "temperature")]
        greedy: bool,
        /// Sample with this softmax temperature (> 0) instead of greedy decoding
        #[arg(long)]
        temperature: Option<f32>,
        /// Sample only from the smallest set of tokens whose probability reaches P (1: no cut)
        #[arg(long = "top-p", value_name = "P", default_value_t = 1.0)]
        top_p: f32,
        /// Sample only from the K most likely tokens (0: no cut)
        #[arg(long = "top-k", value_name = "K", default_value_t = 0)]
        top_k: usize,
        /// Seed of the sampler: the same seed gives the same text (the row i of --input samples
        /// with seed + i, whatever its batch)
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Prompts of --input generated together in one batch
        #[arg(long = "batch-size", value_name = "N", default_value_t = 16)]
        batch_size: usize,
        /// Wrap the prompt as a user message with the tokenizer's chat template
        #[arg(long)]
        chat: bool,
        #[arg(long, value_enum, default_value = "human", help = FORMAT_HELP)]
        format: OutputFormat,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// See exactly what a stage will train on
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Inspect the store
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Serve a pipeline's models (or model folders) to OpenAI clients
    Serve {
        /// The pipeline whose built stages to serve (or give --model)
        pipeline: Option<PathBuf>,
        /// Only these stages (comma-separated; default: every stage that makes a model)
        #[arg(long, value_delimiter = ',', value_name = "NAMES")]
        stages: Option<Vec<String>>,
        #[arg(long = "set", value_name = "PATH=VALUE", help = SET_HELP)]
        set: Vec<String>,
        #[arg(long, value_name = "DIR", help = STORE_HELP)]
        store: Option<PathBuf>,
        /// A model folder to serve (DIR, named after the folder, or NAME=DIR), instead of a pipeline
        #[arg(long = "model", value_name = "[NAME=]DIR", conflicts_with = "pipeline")]
        models: Vec<String>,
        /// A PEFT LoRA adapter served on the first --model, chosen by `model = NAME`
        #[arg(long = "adapter", value_name = "NAME=DIR", requires = "models")]
        adapters: Vec<String>,
        /// The address to listen on (loopback unless you say otherwise)
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The port (0: any free one)
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Require `Authorization: Bearer KEY` on every request
        #[arg(long = "api-key", value_name = "KEY", env = "PTL_API_KEY")]
        api_key: Option<String>,
        /// Sequences decoded together per base model
        #[arg(long = "max-batch", default_value_t = 32)]
        max_batch: usize,
        /// Requests that may wait for a free slot, per base model, before answering 429
        #[arg(long, default_value_t = 256)]
        queue: usize,
        /// The largest `max_tokens` a request may ask (also the default)
        #[arg(long = "max-tokens", default_value_t = 2048)]
        max_tokens: usize,
        /// The largest request body, in bytes
        #[arg(long = "max-body", default_value_t = 1 << 20)]
        max_body: usize,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Print the folder holding a stage's outputs
    Path {
        #[arg(help = FILE_HELP)]
        file: PathBuf,
        /// The stage's name
        stage: String,
        #[arg(long = "set", value_name = "PATH=VALUE", help = SET_HELP)]
        set: Vec<String>,
        #[arg(long, value_name = "DIR", help = STORE_HELP)]
        store: Option<PathBuf>,
    },
    /// List stage kinds, or show one kind's fields and outputs
    Doc {
        /// A stage kind (`sft`, `dpo`, ...); none: list them all
        kind: Option<String>,
        /// Print the whole stage reference as Markdown (docs/stages.md)
        #[arg(long)]
        markdown: bool,
    },
    /// Print a shell completion script: `ptl completions bash > ~/.local/share/bash-completion/completions/ptl`
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// One worker process of a data-parallel stage (`workers = N`), started by `ptl run`
    #[command(hide = true)]
    Worker {
        /// The spec `ptl run` wrote for the stage's workers
        spec: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz dot
    Dot,
    /// A Mermaid flowchart
    Mermaid,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Re-hash every entry and report those that do not match their manifest
    Verify {
        #[arg(help = FOUND_PIPELINE_HELP)]
        pipeline: Option<PathBuf>,
        #[arg(long, value_name = "DIR", help = FOUND_STORE_HELP)]
        store: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct DataCli {
    /// A pipeline file (then TARGET names a stage or a dataset binding) or a JSONL file
    input: PathBuf,
    /// With a pipeline file: the stage whose data to show, or a dataset binding's name
    target: Option<String>,
    #[arg(long = "set", value_name = "PATH=VALUE", help = SET_HELP)]
    set: Vec<String>,
    #[arg(long, value_name = "DIR", help = STORE_HELP)]
    store: Option<PathBuf>,
    /// A model or tokenizer folder (required for a JSONL file)
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The JSONL file's format: alpaca, sharegpt, messages, text, preference or kto (default: detected)
    #[arg(long = "format-in")]
    format_in: Option<String>,
    /// Tokens per row; longer rows are truncated (default: the stage's `max_len`, else 1024)
    #[arg(long = "max-len", value_name = "N")]
    max_len: Option<usize>,
    /// Count the prompt's tokens in the loss too (as the stage field `train_on_prompt`)
    #[arg(long = "train-on-prompt")]
    train_on_prompt: bool,
    /// Train on the last assistant turn only (as the stage field `mask_history`)
    #[arg(long = "mask-history")]
    mask_history: bool,
    /// A chat template file to use instead of the tokenizer's own
    #[arg(long)]
    template: Option<PathBuf>,
    /// Rows to show
    #[arg(long, default_value_t = 3)]
    rows: usize,
    /// Rows to skip first
    #[arg(long, default_value_t = 0)]
    offset: usize,
    #[arg(long, value_enum, default_value = "human", help = FORMAT_HELP)]
    format: OutputFormat,
}

impl DataCli {
    fn args(self) -> data::DataArgs {
        data::DataArgs {
            input: self.input,
            target: self.target,
            set: self.set,
            store: self.store,
            tokenizer: self.tokenizer,
            format_in: self.format_in,
            max_len: self.max_len,
            train_on_prompt: self.train_on_prompt,
            mask_history: self.mask_history,
            template: self.template,
            rows: self.rows,
            offset: self.offset,
            format: self.format,
        }
    }
}

#[derive(Subcommand)]
enum DataCommand {
    /// Rows as the model will see them: rendered text, trained tokens marked, token counts
    Show(DataCli),
    /// Rows, tokens, trained tokens, lengths, truncated, dropped and malformed rows
    Stats(DataCli),
}

/// Whether stdout may use color.
pub fn color_stdout() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// Whether diagnostics on stderr may use color.
pub fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Runs the CLI on the process arguments; returns the exit code.
pub fn main() -> i32 {
    crate::keep_freed_memory();
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
            Command::Plan {
                file,
                set,
                store,
                format,
            } => engine::plan(&file, &set, store.as_deref(), format),
            Command::Graph {
                file,
                set,
                store,
                format,
            } => engine::graph(
                &file,
                &set,
                store.as_deref(),
                format == GraphFormat::Mermaid,
            ),
            Command::Run {
                file,
                set,
                store,
                only,
                from,
                jobs,
                keep_going,
                executor,
                lock_file,
                locked,
                format,
            } => engine::run(engine::RunArgs {
                file: &file,
                set: &set,
                store: store.as_deref(),
                format,
                jobs,
                executor: executor.as_deref(),
                lock_file,
                options: crate::run::Options {
                    jobs: 1,
                    keep_going,
                    only,
                    from,
                    locked,
                    ray: None,
                    overrides: set.clone(),
                },
            }),
            Command::Watch {
                file,
                set,
                store,
                debounce,
                grace,
                jobs,
                format,
            } => crate::run::watch::watch(crate::run::watch::WatchOptions {
                store: engine::store_dir(&file, store.as_deref()),
                file,
                set,
                debounce: std::time::Duration::from_millis(debounce),
                grace: std::time::Duration::from_millis(grace),
                jobs,
                json: format == OutputFormat::Json,
                screen: std::io::stdout().is_terminal(),
            }),
            Command::Generate {
                model,
                with,
                prompt,
                input,
                max_new_tokens,
                greedy,
                temperature,
                top_p,
                top_k,
                seed,
                batch_size,
                chat,
                format,
                compute,
            } => {
                let Some(compute) = compute.resolve() else {
                    return 2;
                };
                let args = generate::GenerateArgs {
                    model,
                    with: with.loading(),
                    prompt,
                    input,
                    max_new_tokens,
                    temperature: temperature.unwrap_or(1.0),
                    top_p,
                    top_k,
                    seed,
                    batch_size,
                    greedy: greedy || temperature.is_none(),
                    chat,
                    json: format == OutputFormat::Json,
                    compute,
                };
                on_pool(|| generate::run(args))
            }
            Command::Score {
                model,
                with,
                input,
                compute,
            } => match compute.resolve() {
                Some(c) => on_pool(|| score::run(&model, &with.loading(), &input, &c)),
                None => 2,
            },
            Command::Reward {
                model,
                input,
                format,
                compute,
            } => match compute.resolve() {
                Some(c) => {
                    on_pool(|| reward::run(&model, &input, format == OutputFormat::Json, &c))
                }
                None => 2,
            },
            Command::Data { command } => match command {
                DataCommand::Show(a) => data::show(a.args()),
                DataCommand::Stats(a) => data::stats(a.args()),
            },
            Command::Gc {
                pipeline,
                store,
                dry_run,
                checkpoints,
            } => engine::gc(pipeline.as_deref(), store.as_deref(), dry_run, checkpoints),
            Command::Store {
                command: StoreCommand::Verify { pipeline, store },
            } => engine::verify(pipeline.as_deref(), store.as_deref()),
            Command::Completions { shell } => {
                use clap::CommandFactory as _;
                clap_complete::generate(shell, &mut Cli::command(), "ptl", &mut std::io::stdout());
                0
            }
            Command::Worker { spec } => worker::main(&spec),
            Command::Path {
                file,
                stage,
                set,
                store,
            } => engine::path(&file, &stage, &set, store.as_deref()),
            Command::Serve {
                pipeline,
                stages,
                set,
                store,
                models,
                adapters,
                host,
                port,
                api_key,
                max_batch,
                queue,
                max_tokens,
                max_body,
                compute,
            } => {
                let Some(compute) = compute.resolve() else {
                    return 2;
                };
                serve::run(serve::ServeArgs {
                    pipeline,
                    stages,
                    set,
                    store,
                    models,
                    adapters,
                    settings: crate::serve::Settings {
                        host,
                        port,
                        api_key,
                        max_batch,
                        queue,
                        max_tokens,
                        max_body,
                    },
                    compute,
                })
            }
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

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every command, argument and option says what it is for in `--help`.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
                let values = if arg.get_action().takes_values() {
                    arg.get_possible_values()
                } else {
                    Vec::new()
                };
                for value in values {
                    if value.get_help().is_none()
                        && !matches!(
                            value.get_name(),
                            "bash" | "zsh" | "fish" | "elvish" | "powershell"
                        )
                    {
                        missing.push(format!("{path} {id}={}", value.get_name()));
                    }
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {}", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "ptl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn completions_name_every_command() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "ptl",
            &mut out,
        );
        let script = String::from_utf8(out).unwrap();
        for cmd in Cli::command().get_subcommands() {
            assert!(script.contains(cmd.get_name()), "{}", cmd.get_name());
        }
    }
}
