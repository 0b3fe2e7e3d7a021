//! The types of values a pipeline passes around, and what each field of a schema accepts.

use std::fmt;

/// Dataset formats (shared/reference §10). `Auto` is detected when a stage reads the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    Auto,
    Alpaca,
    Sharegpt,
    Messages,
    Text,
    Preference,
    Kto,
    /// A `prompt` (text, or a list of messages) to answer, with any other fields (`grpo`).
    Prompt,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Auto,
        Format::Alpaca,
        Format::Sharegpt,
        Format::Messages,
        Format::Text,
        Format::Preference,
        Format::Kto,
        Format::Prompt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Alpaca => "alpaca",
            Format::Sharegpt => "sharegpt",
            Format::Messages => "messages",
            Format::Text => "text",
            Format::Preference => "preference",
            Format::Kto => "kto",
            Format::Prompt => "prompt",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// Formats that hold conversations or instructions (what `sft` trains on).
pub const CHAT_FORMATS: &[Format] = &[Format::Alpaca, Format::Sharegpt, Format::Messages];
/// Formats that carry prompts a policy can answer (what `ppo` and `grpo` sample from).
pub const PROMPT_FORMATS: &[Format] = &[
    Format::Alpaca,
    Format::Sharegpt,
    Format::Messages,
    Format::Preference,
    Format::Kto,
    Format::Prompt,
];

#[derive(Clone, Debug, PartialEq)]
pub enum Type {
    Int,
    /// Accepts integers too.
    Float,
    Bool,
    Str,
    /// A string out of a fixed set.
    Enum(&'static [&'static str]),
    List(Box<Type>),
    Record,
    /// A causal LM: a local HF directory or a training stage's output.
    Model,
    /// A reward model: the output of a `reward_model` stage.
    RewardModel,
    /// A JSONL dataset in one of these formats (empty: any format).
    Dataset(&'static [Format]),
    Tuning,
    /// A reward function (`exact_match(...)`, `regex_match(...)`, `length_penalty(...)`).
    Reward,
    /// Where stages run: `ray(address = ...)`.
    Executor,
    Metrics,
}

impl Type {
    pub fn list(of: Type) -> Type {
        Type::List(Box::new(of))
    }

    /// Whether a value of this type can be written as a bare word in `--set` (taken as a string).
    pub fn is_textual(&self) -> bool {
        matches!(self, Type::Str | Type::Enum(_))
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Int => f.write_str("int"),
            Type::Float => f.write_str("float"),
            Type::Bool => f.write_str("bool"),
            Type::Str => f.write_str("string"),
            Type::Enum(options) => {
                let quoted: Vec<String> = options.iter().map(|o| format!("\"{o}\"")).collect();
                write!(f, "one of {}", quoted.join(" | "))
            }
            Type::List(t) => write!(f, "list of {t}"),
            Type::Record => f.write_str("record"),
            Type::Model => f.write_str("model"),
            Type::RewardModel => f.write_str("reward model"),
            Type::Dataset([]) => f.write_str("dataset"),
            Type::Dataset(formats) => {
                let names: Vec<&str> = formats.iter().map(|x| x.name()).collect();
                write!(f, "dataset ({})", names.join(" | "))
            }
            Type::Tuning => f.write_str("tuning"),
            Type::Reward => f.write_str("reward"),
            Type::Executor => f.write_str("executor"),
            Type::Metrics => f.write_str("metrics"),
        }
    }
}
