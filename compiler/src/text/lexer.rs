//! Splits one line of IR text into tokens. The format is line-oriented, so the parser
//! lexes line by line and every token knows its line and column.

use super::ParseErrorKind;
use crate::ir::Span;

/// A token of the text format.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A name, keyword, op name, dtype or symbolic dimension: `[A-Za-z_][A-Za-z0-9_.]*`.
    Ident(String),
    /// A non-negative integer literal.
    Int(u64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// One of `= ( ) , : [ ] -`.
    Punct(char),
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Int(n) => format!("`{n}`"),
            Tok::Float(x) => format!("`{x:?}`"),
            Tok::Punct(c) => format!("`{c}`"),
        }
    }
}

/// A token and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Its first character.
    pub span: Span,
}

/// Tokenizes one line (without its newline); a `#` or `//` starts a comment.
pub fn lex_line(line: &str, line_no: u32) -> Result<Vec<Token>, (Span, ParseErrorKind)> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let span = Span::new(line_no, i as u32 + 1);
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' || (c == '/' && chars.get(i + 1) == Some(&'/')) {
            break;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(chars[start..i].iter().collect()),
                span,
            });
        } else if c.is_ascii_digit() {
            let start = i;
            let mut float = false;
            while i < chars.len() {
                let d = chars[i];
                if d.is_ascii_digit() {
                    i += 1;
                } else if d == '.' || d == 'e' || d == 'E' {
                    float = true;
                    i += 1;
                    if (d == 'e' || d == 'E') && matches!(chars.get(i), Some('-') | Some('+')) {
                        i += 1;
                    }
                } else {
                    break;
                }
            }
            let text: String = chars[start..i].iter().collect();
            let tok = if float {
                text.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .map(Tok::Float)
            } else {
                text.parse::<u64>().ok().map(Tok::Int)
            };
            match tok {
                Some(tok) => out.push(Token { tok, span }),
                None => return Err((span, ParseErrorKind::BadNumber { text })),
            }
        } else if "=(),:[]-".contains(c) {
            out.push(Token {
                tok: Tok::Punct(c),
                span,
            });
            i += 1;
        } else {
            return Err((span, ParseErrorKind::UnexpectedChar { ch: c }));
        }
    }
    Ok(out)
}
