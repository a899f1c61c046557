//! The proto files are the API's documentation: a client written from them alone must
//! know every field's format, unit, limit and allowed values. This test enforces the
//! minimum: every message, enum, enum value, field (`optional`, `repeated`, `map<..>`
//! and `oneof` members included) and rpc has a `//` comment on the line directly above
//! it.
//!
//! The parser is plain: it splits each file into statements (ended by `;`, `{` or `}`,
//! outside comments, strings and `[...]` options), tracks the enclosing block, and
//! classifies each statement by its first word. A statement that needs a comment must
//! also start its own line, so nothing can hide behind another statement's comment.

use std::path::{Path, PathBuf};

/// What encloses a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Message,
    Enum,
    Service,
    Oneof,
    /// An rpc body, an option aggregate or anything else: nothing inside needs a comment.
    Other,
}

/// One statement: its text (comments and strings removed), the 1-based line it starts
/// on, whether it is the first code on that line, and how it ends.
#[derive(Debug)]
struct Statement {
    text: String,
    line: usize,
    starts_line: bool,
    end: char,
}

/// Splits proto source into statements. `}` is reported as a statement of its own
/// (empty text, end `}`).
fn statements(source: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut start = (0, false);
    let mut in_block_comment = false;
    let mut brackets = 0usize;
    for (index, line) in source.lines().enumerate() {
        let number = index + 1;
        let mut code_before = false;
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            if in_block_comment {
                if c == '*' && next == Some('/') {
                    in_block_comment = false;
                    i += 1;
                }
                i += 1;
                continue;
            }
            if c == '/' && next == Some('/') {
                break;
            }
            if c == '/' && next == Some('*') {
                in_block_comment = true;
                i += 2;
                continue;
            }
            if !c.is_whitespace() && text.trim().is_empty() && !matches!(c, ';' | '{' | '}') {
                start = (number, !code_before);
            }
            if !c.is_whitespace() {
                code_before = true;
            }
            match c {
                '"' | '\'' => {
                    // A string literal: kept as a placeholder, its content ignored.
                    text.push(c);
                    i += 1;
                    while i < chars.len() && chars[i] != c {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    text.push(c);
                }
                '[' => {
                    brackets += 1;
                    text.push(c);
                }
                ']' => {
                    brackets = brackets.saturating_sub(1);
                    text.push(c);
                }
                ';' | '{' if brackets == 0 => {
                    if !text.trim().is_empty() {
                        out.push(Statement {
                            text: text.trim().to_string(),
                            line: start.0,
                            starts_line: start.1,
                            end: c,
                        });
                    }
                    text.clear();
                }
                '}' if brackets == 0 => {
                    if !text.trim().is_empty() {
                        out.push(Statement {
                            text: text.trim().to_string(),
                            line: start.0,
                            starts_line: start.1,
                            end: ' ',
                        });
                    }
                    text.clear();
                    out.push(Statement {
                        text: String::new(),
                        line: number,
                        starts_line: false,
                        end: '}',
                    });
                }
                _ => text.push(c),
            }
            i += 1;
        }
        text.push(' ');
    }
    out
}

/// The constructs of `source` that lack a `//` comment on the line above, as
/// "line N: what", and how many constructs were checked.
fn undocumented(source: &str) -> (Vec<String>, usize) {
    let lines: Vec<&str> = source.lines().collect();
    let commented = |line: usize| {
        line >= 2
            && lines
                .get(line - 2)
                .is_some_and(|l| l.trim_start().starts_with("//"))
    };
    let mut stack: Vec<Block> = Vec::new();
    let mut missing = Vec::new();
    let mut checked = 0;
    for s in statements(source) {
        if s.end == '}' {
            stack.pop();
            continue;
        }
        let first = s
            .text
            .split(|c: char| c.is_whitespace() || c == '<' || c == '(')
            .next()
            .unwrap_or("");
        let context = stack.last().copied();
        let what = match (s.end, first, context) {
            ('{', "message", _) => Some("message"),
            ('{', "enum", _) => Some("enum"),
            ('{' | ';', "rpc", _) => Some("rpc"),
            ('{', _, _) => None,
            (_, "option" | "reserved" | "extensions", _) => None,
            (_, _, Some(Block::Message | Block::Oneof)) => Some("field"),
            (_, _, Some(Block::Enum)) => Some("enum value"),
            _ => None,
        };
        if s.end == '{' {
            stack.push(match first {
                "message" => Block::Message,
                "enum" => Block::Enum,
                "service" => Block::Service,
                "oneof" => Block::Oneof,
                _ => Block::Other,
            });
        }
        let Some(what) = what else { continue };
        checked += 1;
        if !s.starts_line || !commented(s.line) {
            let text: Vec<&str> = s.text.split_whitespace().collect();
            missing.push(format!(
                "line {}: {what} `{}` has no `//` comment on the line above{}",
                s.line,
                text.join(" "),
                if s.starts_line {
                    ""
                } else {
                    " (it must start its own line)"
                }
            ));
        }
    }
    (missing, checked)
}

fn proto_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/oip/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("proto/oip/v1 is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_proto_construct_has_a_comment() {
    let files = proto_files();
    assert!(files.len() >= 5, "proto files not found: {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("proto file is readable");
        let (missing, checked) = undocumented(&source);
        let name = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(file)
            .display()
            .to_string();
        assert!(
            checked > 0,
            "{name}: no construct found: the parser is broken"
        );
        problems.extend(missing.into_iter().map(|m| format!("{name}: {m}")));
    }
    assert!(
        problems.is_empty(),
        "every message, enum, enum value, field and rpc needs a leading `//` comment \
         (format, unit, limits, allowed values, what empty means):\n{}",
        problems.join("\n")
    );
}

/// The checker itself: each kind of construct without a comment is reported, and a
/// fully commented file passes.
#[test]
fn the_checker_finds_every_undocumented_construct() {
    let source = r#"
// A file comment.
syntax = "proto3";

package x.v1;

import "x/v1/other.proto";
option java_package = "x;y";

service S {
  rpc Bare(A) returns (B);
  // Commented.
  rpc WithBody(A) returns (B) {
    option deprecated = true;
  }
}

message Bare {
  string plain = 1;
  optional int64 opt = 2;
  repeated string many = 3;
  map<string, string> pairs = 4;
  string with_options = 5 [deprecated = true, json_name = "a;b{c}"];
  oneof choice {
    string inside = 6;
  }
  message Nested {
    // Commented.
    int32 ok = 1;
    int32 bare = 2;
  }
  reserved 9;
}

// A message on one line.
message OneLine { int32 hidden = 1; }

enum E {
  E_UNSPECIFIED = 0;
  option allow_alias = true;
  // Commented.
  E_OK = 1;
}

// A comment, then a blank line.

message Detached {}
"#;
    let (missing, _) = undocumented(source);
    let named = |needle: &str| missing.iter().any(|m| m.contains(needle));
    for needle in [
        "rpc `rpc Bare(A) returns (B)`",
        "message `message Bare`",
        "field `string plain = 1`",
        "field `optional int64 opt = 2`",
        "field `repeated string many = 3`",
        "field `map<string, string> pairs = 4`",
        "field `string with_options = 5",
        "field `string inside = 6`",
        "message `message Nested`",
        "field `int32 bare = 2`",
        "field `int32 hidden = 1`",
        "enum `enum E`",
        "enum value `E_UNSPECIFIED = 0`",
        "message `message Detached`",
    ] {
        assert!(named(needle), "not reported: {needle}\n{missing:#?}");
    }
    assert_eq!(missing.len(), 14, "{missing:#?}");

    let documented = r#"
syntax = "proto3";
// S.
service S {
  // R.
  rpc R(A) returns (B);
}
// M.
message M {
  // F.
  map<string, string> f = 1;
  /* a block comment */
  // G.
  oneof g {
    // H.
    string h = 2;
  }
}
"#;
    let (missing, checked) = undocumented(documented);
    assert_eq!((missing, checked), (Vec::<String>::new(), 4));
}
