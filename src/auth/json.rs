//! The little JSON the nucleus IPC needs: a string written into a request
//! object, and the top-level fields of a reply object read back. weir has
//! no JSON crate in its build (serde_json is a test dependency only); the
//! payloads are a few dozen bytes, and what is read is bounded by the
//! IPC's message limit. Nested values are skipped (to a bounded depth),
//! never interpreted.

/// A top-level value of a reply object, as far as weir looks at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Bool(bool),
    /// `null`, a number, an object or an array.
    Other,
}

/// Nesting past this is refused (a reply is a flat object).
const MAX_DEPTH: usize = 16;

/// `{"<name>":"<value>"}` with `value` escaped.
pub fn object_with_string(name: &str, value: &str) -> String {
    let mut out = String::with_capacity(value.len() + name.len() + 8);
    out.push('{');
    push_string(&mut out, name);
    out.push(':');
    push_string(&mut out, value);
    out.push('}');
    out
}

fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The fields of a top-level JSON object, in order; `None` unless `bytes`
/// is exactly one well-formed object (whitespace around it allowed).
pub fn object_fields(bytes: &[u8]) -> Option<Vec<(String, Value)>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    p.eat(b'{')?;
    let mut fields = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let name = p.string()?;
            p.ws();
            p.eat(b':')?;
            p.ws();
            let value = p.value(1)?;
            fields.push((name, value));
            p.ws();
            match p.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    p.ws();
    (p.i == p.s.len()).then_some(fields)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.s.get(self.i..end)? == word).then(|| self.i = end)
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(Value::Str),
            b't' => self.literal(b"true").map(|()| Value::Bool(true)),
            b'f' => self.literal(b"false").map(|()| Value::Bool(false)),
            b'n' => self.literal(b"null").map(|()| Value::Other),
            b'{' | b'[' => self.nested(depth).map(|()| Value::Other),
            b'-' | b'0'..=b'9' => self.number().map(|()| Value::Other),
            _ => None,
        }
    }

    fn number(&mut self) -> Option<()> {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.i += 1;
        }
        // Loose (the value is never used), but it must be a number's text.
        std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .parse::<f64>()
            .ok()
            .map(|_| ())
    }

    fn nested(&mut self, depth: usize) -> Option<()> {
        let close = match self.next()? {
            b'{' => b'}',
            _ => b']',
        };
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            if close == b'}' {
                self.string()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
            }
            self.value(depth + 1)?;
            self.ws();
            match self.next()? {
                b',' => continue,
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.i;
            while !matches!(self.peek()?, b'"' | b'\\') {
                if self.peek()? < 0x20 {
                    return None;
                }
                self.i += 1;
            }
            // The input is UTF-8 and the stop bytes are ASCII.
            out.push_str(std::str::from_utf8(&self.s[start..self.i]).ok()?);
            if self.next()? == b'"' {
                return Some(out);
            }
            match self.next()? {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let unit = self.hex4()?;
                    let c = if (0xD800..0xDC00).contains(&unit) {
                        self.literal(b"\\u")?;
                        let low = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return None;
                        }
                        char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?
                    } else {
                        char::from_u32(unit)?
                    };
                    out.push(c);
                }
                _ => return None,
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let end = self.i.checked_add(4)?;
        let digits = std::str::from_utf8(self.s.get(self.i..end)?).ok()?;
        let unit = u32::from_str_radix(digits, 16).ok()?;
        self.i = end;
        Some(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_string_reads_back() {
        for token in ["ABCDEFGHIJKLMNOP", "q\"uo\\te\n\u{1}é💡", ""] {
            let json = object_with_string("token", token);
            assert_eq!(
                object_fields(json.as_bytes()),
                Some(vec![("token".into(), Value::Str(token.into()))]),
                "{json}"
            );
        }
        assert_eq!(
            object_with_string("authToken", "ABC"),
            r#"{"authToken":"ABC"}"#
        );
    }

    #[test]
    fn replies_of_both_nuclei_are_read() {
        assert_eq!(
            object_fields(b" {\"isValid\" : true}\n"),
            Some(vec![("isValid".into(), Value::Bool(true))])
        );
        let lite = br#"{"_message":"Invalid token \u00e9\ud83d\udca1","_errorCode":"InvalidTokenError","n":[1,{"a":null}],"x":-1.5e3}"#;
        let fields = object_fields(lite).unwrap();
        assert_eq!(fields[0].1, Value::Str("Invalid token é💡".into()));
        assert_eq!(fields[1].1, Value::Str("InvalidTokenError".into()));
        assert_eq!(
            (fields[2].1.clone(), fields[3].1.clone()),
            (Value::Other, Value::Other)
        );
        assert_eq!(object_fields(b"{}"), Some(vec![]));
    }

    #[test]
    fn anything_else_is_refused_without_a_panic() {
        let deep = "[".repeat(100) + &"]".repeat(100);
        let deep = format!("{{\"a\":{deep}}}");
        for bad in [
            "",
            "{",
            "}",
            "[]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":tru}",
            "{\"a\":1}x",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":1,}",
            "{a:1}",
            "{\"a\":\"\\x\"}",
            "{\"a\":-}",
            &deep,
        ] {
            assert_eq!(object_fields(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            object_fields(&[b'{', b'"', 0xff, b'"', b':', b'1', b'}']),
            None
        );
        // Every prefix of a valid reply is refused, none panics.
        let good = br#"{"isValid":true,"message":"a\"b","list":[1,2,{"c":[]}]}"#;
        for end in 0..good.len() {
            assert_eq!(object_fields(&good[..end]), None, "{end}");
        }
        assert!(object_fields(good).is_some());
    }
}
