//! From generated token ids to the text a client sees: decoded incrementally (a character split
//! across tokens waits for its last byte), stop tokens left out, and cut before the first stop
//! string, which is never sent, not even partly while streaming.

use crate::data::tokenizer::TextTokenizer;

pub struct TextStream<'a> {
    tok: &'a TextTokenizer,
    /// Ids that make text (stop tokens excluded).
    ids: Vec<u32>,
    stop_ids: &'a [u32],
    stops: &'a [String],
    /// The text decoded so far, up to the first stop string.
    text: String,
    /// How much of `text` was handed out.
    sent: usize,
    /// A stop string was found: nothing more comes.
    pub stopped: bool,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a TextTokenizer, stop_ids: &'a [u32], stops: &'a [String]) -> TextStream<'a> {
        TextStream {
            tok,
            ids: Vec::new(),
            stop_ids,
            stops,
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds a token; returns the text that can be sent now.
    pub fn push(&mut self, id: u32) -> String {
        if self.stopped || self.stop_ids.contains(&id) {
            return String::new();
        }
        self.ids.push(id);
        let decoded = self.tok.inner.decode(&self.ids, true).unwrap_or_default();
        // An incomplete character decodes to U+FFFD: wait for the rest of it.
        if decoded.ends_with('\u{FFFD}') {
            return String::new();
        }
        self.text = decoded;
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(at);
            self.stopped = true;
            return self.take(self.text.len());
        }
        // Hold back what could be the beginning of a stop string.
        let hold = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len())
                    .rev()
                    .find(|&n| s.is_char_boundary(n) && self.text.ends_with(&s[..n]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        self.take(self.text.len() - hold)
    }

    /// Whatever is left once generation ended.
    pub fn finish(&mut self) -> String {
        self.take(self.text.len())
    }

    fn take(&mut self, upto: usize) -> String {
        match self.text.get(self.sent..upto.max(self.sent)) {
            Some(out) => {
                let out = out.to_string();
                self.sent = upto.max(self.sent);
                out
            }
            None => String::new(),
        }
    }

    /// The whole text so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}
