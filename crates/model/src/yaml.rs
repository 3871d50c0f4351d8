//! Reading YAML (or JSON): a stream split into its documents, and each document read into a
//! JSON value tree, as the Kubernetes API server converts YAML to JSON before decoding it.
//!
//! The stream is split on its `---` and `...` lines before anything is parsed, so that a
//! document's size is known (and refused over the object limit) before its parse, and a
//! syntax error ends only its own document. The split is exact: YAML forbids a line that starts
//! with a document marker inside any document's content.

use serde_json::Value;
use serde_saphyr::{MessageFormatter, UserMessageFormatter};

use crate::limits::MAX_OBJECT_BYTES;

/// One document of a YAML stream, not parsed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawDocument<'a> {
    /// Zero-based index of the document in the stream.
    pub index: usize,
    /// One-based line of the stream where the document's text starts.
    pub first_line: usize,
    /// The document's text, with the marker lines that open and close it.
    pub text: &'a str,
}

/// The documents of `text`, numbered as a YAML parser numbers them: comments and directives
/// before a `---` belong to the document it opens; an explicit empty document (`---` alone)
/// counts.
pub(crate) fn split_documents(text: &str) -> Vec<RawDocument<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut documents = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    // Whether the current document opened with `---`, and whether it holds anything but
    // comments, directives and blank lines: one or the other makes it a document.
    let mut explicit = false;
    let mut content = false;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let number = i + 1;
        if is_marker(line, "---") {
            if explicit || content {
                documents.push(RawDocument {
                    index: documents.len(),
                    first_line,
                    text: &text[start..offset],
                });
                start = offset;
                first_line = number;
            }
            explicit = true;
            content = false;
        } else if is_marker(line, "...") {
            let end = offset + line.len();
            if explicit || content {
                documents.push(RawDocument {
                    index: documents.len(),
                    first_line,
                    text: &text[start..end],
                });
            }
            start = end;
            first_line = number + 1;
            explicit = false;
            content = false;
        } else if !content {
            content = holds_content(line);
        }
        offset += line.len();
    }
    if explicit || content {
        documents.push(RawDocument {
            index: documents.len(),
            first_line,
            text: &text[start..],
        });
    }
    documents
}

/// Whether `line` is the document marker `marker` (`---` or `...`): at the start of the line
/// and followed by white space or the line's end.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether `line` is more than white space, a comment or a directive.
fn holds_content(line: &str) -> bool {
    let trimmed = line.trim_start();
    !(trimmed.is_empty() || trimmed.starts_with('#') || line.starts_with('%'))
}

/// Reads one document into a value tree; `None` for an empty document. The error is the
/// parser's message with the line and column in the whole stream.
pub(crate) fn parse_document(document: &RawDocument<'_>) -> Result<Option<Value>, String> {
    serde_saphyr::from_str_with_options(document.text, options()).map_err(|e| {
        let cause = innermost(&e);
        let mut message = UserMessageFormatter.format_message(cause).into_owned();
        if let Some(at) = e.location().filter(|at| at.line() > 0) {
            let line = at.line() + document.first_line as u64 - 1;
            message.push_str(&format!(" at line {line} column {}", at.column()));
        }
        if matches!(
            cause,
            serde_saphyr::Error::Budget { .. }
                | serde_saphyr::Error::AliasReplayLimitExceeded { .. }
        ) {
            message.push_str(&format!(
                "; aliases (`*name`) may copy at most {MAX_ALIAS_EVENTS} nodes into one \
                 document; write the values out, or split the document into several objects"
            ));
        }
        message
    })
}

/// The error under the wrappers that only add where an alias was used or a source snippet.
fn innermost(mut error: &serde_saphyr::Error) -> &serde_saphyr::Error {
    while let serde_saphyr::Error::AliasError { error: inner, .. }
    | serde_saphyr::Error::WithSnippet { error: inner, .. } = error
    {
        error = inner;
    }
    error
}

/// The parser's settings: YAML 1.2 booleans (`yes` and `on` are strings, as they were with
/// serde_yaml), duplicate keys refused (as `kubectl` does), a budget of nodes and events that
/// any document within the object limit fits, and alias expansion bounded so that a small
/// document cannot expand into a huge tree (a "billion laughs").
fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    // Every node and event takes at least one byte of text, aliases aside.
    budget.max_nodes = MAX_OBJECT_BYTES;
    budget.max_events = 2 * MAX_OBJECT_BYTES;
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    serde_saphyr::options! {
        budget: Some(budget),
        alias_limits: alias_limits,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        strict_booleans: true,
        with_snippet: false,
    }
}

/// Most parser events aliases may replay into one document. Manifests seldom use aliases;
/// this keeps a document's tree within a small multiple of its text.
const MAX_ALIAS_EVENTS: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<(usize, usize, &str)> {
        split_documents(text)
            .into_iter()
            .map(|d| (d.index, d.first_line, d.text))
            .collect()
    }

    #[test]
    fn documents_are_numbered_as_a_parser_numbers_them() {
        assert_eq!(texts(""), []);
        assert_eq!(texts("# only a comment\n"), []);
        assert_eq!(texts("a: 1\n"), [(0, 1, "a: 1\n")]);
        assert_eq!(
            texts("a: 1\n---\nb: 2\n"),
            [(0, 1, "a: 1\n"), (1, 2, "---\nb: 2\n")]
        );
        assert_eq!(
            texts("# c\n---\n---\nb: 2"),
            [(0, 1, "# c\n---\n"), (1, 3, "---\nb: 2")]
        );
        assert_eq!(
            texts("%YAML 1.2\n---\na: 1\n...\n---\nb: 2\n"),
            [(0, 1, "%YAML 1.2\n---\na: 1\n...\n"), (1, 5, "---\nb: 2\n")]
        );
        assert_eq!(
            texts("--- {a: 1}\r\n---\r\n"),
            [(0, 1, "--- {a: 1}\r\n"), (1, 2, "---\r\n")]
        );
        assert_eq!(
            texts("\u{feff}a: |\n  ---\n----: x\n"),
            [(0, 1, "a: |\n  ---\n----: x\n")]
        );
    }

    #[test]
    fn syntax_errors_are_located_in_the_stream() {
        let text = "a: 1\n---\nb: {c: 1\n";
        let documents = split_documents(text);
        assert_eq!(
            parse_document(&documents[0]),
            Ok(Some(serde_json::json!({"a": 1})))
        );
        let message = parse_document(&documents[1]).expect_err("unclosed flow mapping");
        assert_eq!(message, "unclosed bracket '{' at line 3 column 4");
        assert_eq!(parse_document(&split_documents("---\n")[0]), Ok(None));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (level, name) in ('b'..='j').enumerate() {
            let previous = char::from(b'a' + level as u8);
            let aliases = vec![format!("*{previous}"); 10].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{aliases}]\n"));
        }
        let message = parse_document(&split_documents(&bomb)[0]).expect_err("a billion laughs");
        assert!(message.contains("at most 100000 nodes"), "{message}");
    }
}
