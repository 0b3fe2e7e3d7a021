//! The OpenAI request fields `ptl serve` reads, checked one by one: a wrong type, a value out of
//! range or a missing field is a 400 naming the field (OpenAI's error shape), never a crash.

use serde_json::{Map, Value as Json};

/// An error answered to the client: status, message, OpenAI's `type`, the field, and a code.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn status(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Json {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

type Result<T> = std::result::Result<T, ApiError>;

/// What both endpoints share.
#[derive(Debug)]
pub struct Common {
    pub model: String,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

pub enum Prompt {
    Chat(Vec<Json>),
    Texts(Vec<String>),
}

/// A request, checked.
pub struct Request {
    pub common: Common,
    pub prompt: Prompt,
    /// Alternatives per token (`Some(0)`: only the chosen token's log-prob).
    pub logprobs: Option<usize>,
    pub echo: bool,
}

/// The JSON body as an object.
pub fn object(body: &[u8]) -> Result<Map<String, Json>> {
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::status(
            400,
            "invalid_request_error",
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::status(
            400,
            "invalid_request_error",
            format!("the request body is not valid JSON: {e}"),
        )),
    }
}

struct Fields<'a>(&'a Map<String, Json>);

impl Fields<'_> {
    /// A field that is absent or null is `None`.
    fn get(&self, name: &str) -> Option<&Json> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// A value of `name` read by `read` (`what` it must be), within [lo, hi].
    fn ranged<T: PartialOrd + std::fmt::Display>(
        &self,
        name: &str,
        (lo, hi): (T, T),
        read: impl Fn(&Json) -> Option<T>,
        what: &str,
    ) -> Result<Option<T>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match read(v) {
            Some(x) if x >= lo && x <= hi => Ok(Some(x)),
            Some(x) => Err(ApiError::invalid(
                name,
                format!("`{name}` is {x}; it must be between {lo} and {hi}"),
            )),
            None => Err(ApiError::invalid(name, format!("`{name}` must be {what}"))),
        }
    }

    fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f64>> {
        self.ranged(name, (lo, hi), Json::as_f64, "a number")
    }

    fn integer(&self, name: &str, lo: i64, hi: i64) -> Result<Option<i64>> {
        self.ranged(name, (lo, hi), Json::as_i64, "an integer")
    }

    fn boolean(&self, name: &str) -> Result<bool> {
        match self.get(name) {
            None => Ok(false),
            Some(Json::Bool(b)) => Ok(*b),
            Some(_) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be true or false"),
            )),
        }
    }

    fn strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(vec![s.clone()])),
            Some(Json::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::invalid(
                            name,
                            format!("`{name}` must be a string or a list of strings"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a string or a list of strings"),
            )),
        }
    }
}

/// Checks the fields both endpoints share; `max_tokens_limit` bounds `max_tokens`.
fn common(f: &Fields, max_tokens_limit: usize, chat: bool) -> Result<Common> {
    let model = match f.get("model") {
        Some(Json::String(m)) => m.clone(),
        Some(_) => return Err(ApiError::invalid("model", "`model` must be a string")),
        None => return Err(ApiError::invalid("model", "`model` is required")),
    };
    let limit = max_tokens_limit as i64;
    let mut max_tokens = f.integer("max_tokens", 1, limit)?;
    if chat {
        if let Some(m) = f.integer("max_completion_tokens", 1, limit)? {
            max_tokens = Some(m);
        }
    }
    let stop = f.strings("stop")?.unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "`stop` holds up to 4 non-empty strings",
        ));
    }
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Json::Object(o)) => Fields(o).boolean("include_usage")?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    Ok(Common {
        model,
        max_tokens: max_tokens.map(|m| m as usize),
        temperature: f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: f.number("top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32,
        seed: f.integer("seed", i64::MIN, i64::MAX)?.map(|s| s as u64),
        stop,
        n: f.integer("n", 1, 16)?.unwrap_or(1) as usize,
        stream: f.boolean("stream")?,
        include_usage,
    })
}

/// A message's text: a string, or a list of text parts.
fn message_text(content: &Json, at: usize) -> Result<String> {
    let param = format!("messages[{at}].content");
    match content {
        Json::String(s) => Ok(s.clone()),
        Json::Array(parts) => parts
            .iter()
            .map(
                |p| match (p.get("type").and_then(Json::as_str), p.get("text")) {
                    (Some("text"), Some(Json::String(t))) => Ok(t.clone()),
                    _ => Err(ApiError::invalid(
                        &param,
                        "only text content parts are supported",
                    )),
                },
            )
            .collect::<Result<Vec<_>>>()
            .map(|texts| texts.concat()),
        _ => Err(ApiError::invalid(
            &param,
            "`content` must be a string or a list of text parts",
        )),
    }
}

/// `POST /v1/chat/completions`.
pub fn chat(body: &Map<String, Json>, max_tokens_limit: usize) -> Result<Request> {
    let f = Fields(body);
    let common = common(&f, max_tokens_limit, true)?;
    let messages = match f.get("messages") {
        Some(Json::Array(m)) if !m.is_empty() => m,
        Some(Json::Array(_)) => return Err(ApiError::invalid("messages", "`messages` is empty")),
        Some(_) => return Err(ApiError::invalid("messages", "`messages` must be a list")),
        None => return Err(ApiError::invalid("messages", "`messages` is required")),
    };
    let mut rendered = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.get("role").and_then(Json::as_str) {
            Some(r @ ("system" | "developer" | "user" | "assistant" | "tool")) => {
                if r == "developer" {
                    "system"
                } else {
                    r
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    "`role` must be system, developer, user, assistant or tool",
                ))
            }
        };
        let content = match m.get("content") {
            Some(c) if !c.is_null() => message_text(c, i)?,
            _ => String::new(),
        };
        rendered.push(serde_json::json!({"role": role, "content": content}));
    }
    let logprobs = if f.boolean("logprobs")? {
        Some(f.integer("top_logprobs", 0, 20)?.unwrap_or(0) as usize)
    } else if f.get("top_logprobs").is_some() {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        ));
    } else {
        None
    };
    Ok(Request {
        common,
        prompt: Prompt::Chat(rendered),
        logprobs,
        echo: false,
    })
}

/// `POST /v1/completions`.
pub fn completion(body: &Map<String, Json>, max_tokens_limit: usize) -> Result<Request> {
    let f = Fields(body);
    let mut common = common(&f, max_tokens_limit, false)?;
    // The legacy endpoint's default is 16 tokens.
    common.max_tokens.get_or_insert(16);
    let texts = match f.strings("prompt")? {
        Some(t) if !t.is_empty() => t,
        Some(_) => return Err(ApiError::invalid("prompt", "`prompt` is empty")),
        None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
    };
    let logprobs = f.integer("logprobs", 0, 5)?.map(|k| k as usize);
    let echo = f.boolean("echo")?;
    if echo && logprobs.is_some() {
        return Err(ApiError::invalid(
            "echo",
            "`echo` with `logprobs` (the prompt's log-probs) is not supported",
        ));
    }
    Ok(Request {
        common,
        prompt: Prompt::Texts(texts),
        logprobs,
        echo,
    })
}
